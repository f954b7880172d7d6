"""FEMNIST in LEAF's JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from flcore.data import ArrayDataModule, normalizer
from flcore.errors import DataNotFoundError
from flcore.params import ComponentParams


class FEMNISTParams(ComponentParams):
    root: str = Field("data/femnist", description="Folder with LEAF's train/ and test/ JSON files.")


def read_json_users(folder: Path, dataset: str, command: str):
    """Each user's name and data in a LEAF split folder, in file order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataNotFoundError(
            f"{dataset}: no LEAF JSON files in '{folder.resolve()}'. Run LEAF's preprocessing "
            f"({command} in leaf/data/{dataset}) and point dataset.root at the folder holding its train/ and "
            "test/ subfolders."
        )
    for file in files:
        blob = json.loads(file.read_text())
        for user in blob["users"]:
            yield user, blob["user_data"][user]


def read_split(folder: Path, writers: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and writer index of every sample in a split's JSON files."""
    xs, ys, owners = [], [], []
    for user, data in read_json_users(folder, "femnist", "./preprocess.sh -s niid --sf 1.0 -k 0 -t sample"):
        writer = writers.setdefault(user, len(writers))
        xs.append(np.asarray(data["x"], dtype=np.float32).reshape(-1, 1, 28, 28))
        ys.append(np.asarray(data["y"], dtype=np.int64))
        owners.append(np.full(len(data["y"]), writer, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)


def FEMNIST(params: FEMNISTParams) -> ArrayDataModule:
    """62-class handwritten characters, one group per writer."""
    root = Path(params.root)
    writers: dict[str, int] = {}
    x_train, y_train, groups = read_split(root / "train", writers)
    x_test, y_test, _ = read_split(root / "test", writers)
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return ArrayDataModule(
        "femnist", (torch.from_numpy(x_train), torch.from_numpy(y_train)),
        (torch.from_numpy(x_test), torch.from_numpy(y_test)), num_classes=62, groups=groups,
        transform=normalizer(mean, std),
    )
