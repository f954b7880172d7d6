"""Any Hugging Face ``datasets`` dataset as an flcore dataset, from a local folder or the local cache.

Nothing is downloaded: a folder written by ``save_to_disk`` is read with ``load_from_disk``, and
anything else goes through ``load_dataset`` with the Hub switched off, so it works for local files
(``path: parquet`` with ``data_files``) and for datasets already in the cache. Inputs are an image
column (decoded once into a ``uint8`` tensor, normalized per channel on the device) or a list of
numeric columns (a float matrix, normalized per feature); labels are a class-label or integer column,
or strings (numbered in sorted order); an optional column of natural owners (writer, user) becomes
the groups that the ``natural`` partitioners use.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from pydantic import Field, model_validator

from flcore.data import ArrayDataModule, normalizer
from flcore.errors import ConfigError, DataNotFoundError
from flcore.params import ComponentParams


class HFDatasetParams(ComponentParams):
    path: str = Field(description="A folder written by save_to_disk, a local builder (parquet, csv, json, "
                      "imagefolder) with data_files, or a dataset name already in the local cache.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Local files for a builder such as parquet or csv, per split.")
    name: str | None = Field(None, description="The dataset's configuration (load_dataset's name).")
    cache_dir: str | None = Field(None, description="Hugging Face cache folder (default: theirs).")
    train_split: str = Field("train", description="Split that the agents share.")
    test_split: str | None = Field("test", description="Split the global model is evaluated on; null carves "
                                   "test_fraction off the training split.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of a single split held out for testing.")
    split_seed: int = Field(0, ge=0, description="Seed of that held-out share.")
    image: str | None = Field(None, description="Column of images (PIL images or arrays), all of one size.")
    features: list[str] | None = Field(None, min_length=1, description="Numeric columns of a tabular dataset.")
    label: str = Field("label", description="Column of labels: class labels, integers or strings.")
    group: str | None = Field(None, description="Column of natural owners (writer, user) for natural partitioners.")

    @model_validator(mode="after")
    def _one_input(self) -> HFDatasetParams:
        if (self.image is None) == (self.features is None):
            raise ValueError("give exactly one of 'image' (an image column) or 'features' (numeric columns)")
        return self


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Switch the Hub off for one load: local files and the cache only, never a download."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load(params: HFDatasetParams) -> Any:
    import datasets

    folder = Path(params.path).expanduser()
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        return datasets.load_from_disk(str(folder))
    try:
        with _offline():
            return datasets.load_dataset(params.path, params.name, data_files=params.data_files,
                                         cache_dir=params.cache_dir)
    except Exception as exc:  # the Hub is off: whatever is missing is reported, never fetched
        raise DataNotFoundError(
            f"dataset.path = {params.path!r}: not a folder written by save_to_disk, and load_dataset could not "
            f"read it from local files or the cache without the Hub ({type(exc).__name__}: {exc}). Save it with "
            "dataset.save_to_disk(folder) on a machine that has it and point dataset.path at that folder."
        ) from None


def _splits(loaded: Any, params: HFDatasetParams) -> tuple[Any, Any]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({params.train_split: loaded})
    if params.train_split not in loaded:
        raise ConfigError(f"dataset.train_split = {params.train_split!r}: the dataset's splits are {list(loaded)}.")
    train = loaded[params.train_split]
    if params.test_split is not None and params.test_split in loaded:
        return train, loaded[params.test_split]
    if params.test_split is not None and len(loaded) > 1:
        raise ConfigError(f"dataset.test_split = {params.test_split!r}: the dataset's splits are {list(loaded)}; "
                          "name one, or null to hold out test_fraction of the training split.")
    held = train.train_test_split(test_size=params.test_fraction, seed=params.split_seed)
    return held["train"], held["test"]


def _column(split: Any, column: str) -> np.ndarray:
    if column not in split.column_names:
        raise ConfigError(f"dataset: no column {column!r}; the dataset has {split.column_names}.")
    values = split.with_format("numpy")[column]
    values = np.asarray(values)
    if values.dtype == object:
        raise ConfigError(f"dataset: column {column!r} holds items of different shapes (images of different "
                          "sizes, say); make them one size first, for example with dataset.map.")
    return values


def _labels(train: Any, test: Any, column: str) -> tuple[np.ndarray, np.ndarray, int]:
    import datasets

    feature = train.features.get(column)
    y_train, y_test = _column(train, column), _column(test, column)
    if isinstance(feature, datasets.ClassLabel):
        return y_train.astype(np.int64), y_test.astype(np.int64), feature.num_classes
    if y_train.dtype.kind in "iu":
        if min(y_train.min(initial=0), y_test.min(initial=0)) < 0:
            raise ConfigError(f"dataset.label = {column!r}: labels must be non-negative class ids.")
        return y_train.astype(np.int64), y_test.astype(np.int64), int(max(y_train.max(), y_test.max())) + 1
    if y_train.dtype.kind in "US":
        names, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
        return codes[: len(y_train)].astype(np.int64), codes[len(y_train):].astype(np.int64), len(names)
    raise ConfigError(f"dataset.label = {column!r}: expected class labels, integers or strings, got {y_train.dtype}.")


def _images(split: Any, column: str) -> np.ndarray:
    """Images as ``(N, C, H, W)``; channels last (H, W, C) as Hugging Face stores them are moved first."""
    images = _column(split, column)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = np.moveaxis(images, -1, 1)
    else:
        raise ConfigError(f"dataset.image = {column!r}: expected images of shape (H, W) or (H, W, C), got "
                          f"{images.shape[1:]}.")
    return np.ascontiguousarray(images)


def _tabular(split: Any, columns: list[str]) -> np.ndarray:
    matrix = np.stack([_column(split, c).astype(np.float32) for c in columns], axis=1)
    if matrix.ndim != 2:
        raise ConfigError(f"dataset.features = {columns}: each feature column must hold one number per row.")
    return matrix


def HFDataset(params: HFDatasetParams) -> ArrayDataModule:
    """A Hugging Face dataset's image (or numeric) and label columns, with its groups if named."""
    train, test = _splits(_load(params), params)
    y_train, y_test, classes = _labels(train, test, params.label)
    if params.image is not None:
        x_train, x_test = _images(train, params.image), _images(test, params.image)
        scale = 255.0 if x_train.dtype == np.uint8 else 1.0
        axes = (0, 2, 3)
    else:
        x_train, x_test = _tabular(train, params.features), _tabular(test, params.features)
        scale, axes = 1.0, (0,)
    mean = x_train.mean(axis=axes, dtype=np.float64) / scale
    std = x_train.std(axis=axes, dtype=np.float64) / scale
    std[std == 0] = 1.0
    groups = None
    if params.group is not None:
        _, groups = np.unique(_column(train, params.group), return_inverse=True)
    name = Path(params.path).name if params.name is None else f"{params.path}/{params.name}"
    return ArrayDataModule(
        name, (torch.from_numpy(x_train), torch.from_numpy(y_train)), (torch.from_numpy(x_test), torch.from_numpy(y_test)),
        num_classes=classes, groups=groups.astype(np.int64) if groups is not None else None,
        transform=normalizer(tuple(mean.tolist()), tuple(std.tolist()), scale=scale),
    )
