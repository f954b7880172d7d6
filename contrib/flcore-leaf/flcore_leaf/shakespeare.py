"""Shakespeare in LEAF's JSON format: next-character prediction, one group per speaking role."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from flcore.data import ArrayDataModule, DataSpec
from flcore.errors import DataNotFoundError
from flcore.params import ComponentParams
from flcore_leaf.femnist import read_json_users

# LEAF's vocabulary (leaf/models/utils/language_utils.py): 80 printable characters
LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def encode(text: str) -> list[int]:
    """Character ids; characters outside the vocabulary map to the space."""
    return [LETTERS.find(c) if c in LETTERS else 1 for c in text]


class ShakespeareParams(ComponentParams):
    root: str = Field("data/shakespeare", description="Folder with LEAF's train/ and test/ JSON files.")
    sequence_length: int = Field(80, gt=0, description="Characters of context per sample (LEAF uses 80).")


def _split(folder: Path, roles: dict[str, int], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, owners = [], [], []
    for role, data in read_json_users(folder, "shakespeare", "./preprocess.sh -s niid --sf 0.2 -k 0 -t sample"):
        index = roles.setdefault(role, len(roles))
        for context, target in zip(data["x"], data["y"]):
            xs.append(encode(context[-length:].rjust(length)))
            ys.append(encode(target)[0])
            owners.append(index)
    return np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.int64), np.asarray(owners, dtype=np.int64)


def Shakespeare(params: ShakespeareParams) -> ArrayDataModule:
    """Sequences of character ids and the next character; the roles are natural groups."""
    roles: dict[str, int] = {}
    root = Path(params.root)
    x_train, y_train, groups = _split(root / "train", roles, params.sequence_length)
    x_test, y_test, _ = _split(root / "test", roles, params.sequence_length)
    if len(y_train) == 0:
        raise DataNotFoundError(f"shakespeare: the JSON files under '{root.resolve()}' hold no samples.")
    return ArrayDataModule("shakespeare", (torch.from_numpy(x_train), torch.from_numpy(y_train)),
                           (torch.from_numpy(x_test), torch.from_numpy(y_test)), num_classes=len(LETTERS),
                           groups=groups)


Shakespeare.describe_spec = lambda params: DataSpec(len(LETTERS), (params.sequence_length,))  # type: ignore[attr-defined]
