"""A dataset plugin for scale tests: 200,000 two-class samples, enough for 100,000 agents of two."""

from __future__ import annotations

import torch

from flcore import hookimpl
from flcore.data import ArrayDataModule


def many_samples(params) -> ArrayDataModule:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return ArrayDataModule("many", (x, y), (x[:1000], y[:1000]), num_classes=2)


class ManySamples:
    """Pass as ``plugins=[("scale", ManySamples)]``."""

    @staticmethod
    @hookimpl
    def register_datasets(register):
        register("many_samples", many_samples, "200,000 two-class samples.")
