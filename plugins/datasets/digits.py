"""The handwritten digits that ship with scikit-learn: a real image dataset that needs no download."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from flcore.data import ArrayDataModule, normalizer, split_validation
from flcore.params import ComponentParams


class DigitsParams(ComponentParams):
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of images held out as the test split.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the training images held out for validation.")
    split_seed: int = Field(0, ge=0, description="Seed of the train/validation/test split.")


def Digits(params: DigitsParams) -> ArrayDataModule:
    """1,797 grayscale 8x8 digits (values 0-16) as 1x8x8 images; splits never overlap."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(params.split_seed).permutation(len(y)))
    n_test = int(round(params.test_fraction * len(y)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    train, val = split_validation(x[train_idx], y[train_idx], params.val_fraction, params.split_seed + 1)
    mean, std = float(train[0].mean() / 16), float(train[0].std() / 16)
    return ArrayDataModule(
        "digits", train, (x[test_idx], y[test_idx]), num_classes=10, val=val,
        transform=normalizer(mean, std, scale=16.0),
    )
