"""Datasets held as tensors, as Lightning datamodules.

A dataset component returns an :class:`ArrayDataModule`: train, validation and test tensors that never
overlap, plus what a model needs to adapt (classes, input shape). The federated engine slices agents'
batches straight from these tensors (no per-sample Python), and the same object is a
``LightningDataModule`` for centralized training with a plain ``Trainer``. Inputs may be stored
compactly (``uint8`` images); :meth:`ArrayDataModule.transform` turns a batch into model inputs on the
device, in both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its inputs and outputs."""

    num_classes: int
    input_shape: tuple[int, ...]


class ArrayDataModule(L.LightningDataModule):
    """Train/validation/test tensors with a batch transform; optional natural groups per sample."""

    def __init__(
        self,
        name: str,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        num_classes: int,
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        groups: np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.name = name
        self.x_train, self.y_train = train
        self.x_test, self.y_test = test
        self.x_val, self.y_val = val if val is not None else (None, None)
        self.num_classes = int(num_classes)
        self.groups = groups
        self._transform = transform
        self.batch_size = batch_size
        sample = self.transform(self.x_train[:1])
        self.spec = DataSpec(self.num_classes, tuple(sample.shape[1:]))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Turn a stored batch into model inputs (``uint8`` to normalized float, say)."""
        return self._transform(x) if self._transform is not None else x

    @property
    def train_labels(self) -> np.ndarray:
        """Training labels as a NumPy array, for partitioners."""
        return self.y_train.cpu().numpy()

    # Lightning datamodule API, for centralized training ---------------------------------------
    def _loader(self, x: torch.Tensor, y: torch.Tensor, shuffle: bool) -> DataLoader:
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.x_train, self.y_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        x, y = (self.x_val, self.y_val) if self.x_val is not None else (self.x_test, self.y_test)
        return self._loader(x, y, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.x_test, self.y_test, shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        augment = getattr(self, "augment", None)  # set by centralized training: (augmentation, generator)
        if augment is not None and self.trainer is not None and self.trainer.training:
            x = augment[0](x, augment[1])
        return self.transform(x), y


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Carve a seeded validation split off a training set; the two never overlap."""
    if fraction <= 0:
        return (x, y), None
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(fraction * len(y))))
    val_idx, train_idx = torch.from_numpy(order[:n_val]), torch.from_numpy(order[n_val:])
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def normalizer(mean: float | tuple[float, ...], std: float | tuple[float, ...], scale: float = 1.0):
    """A batch transform: to float, divide by ``scale``, normalize per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)

    def transform(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if scale != 1.0:
            x = x / scale
        shape = (1, -1) + (1,) * (x.dim() - 2) if mean_t.dim() else ()
        m = mean_t.to(x.device).reshape(shape) if shape else mean_t.to(x.device)
        s = std_t.to(x.device).reshape(shape) if shape else std_t.to(x.device)
        return (x - m) / s

    return transform
