"""IID partitions: every sample used exactly once, equal or skewed sizes."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


def split_by_sizes(indices: np.ndarray, sizes: np.ndarray) -> Partition:
    """Consecutive blocks of ``indices`` with the given sizes."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return Partition(indices[: offsets[-1]].astype(np.int64), offsets)


class IID(Partitioner):
    """A seeded permutation cut into shards whose sizes differ by at most one."""

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        n = len(labels)
        if n < num_agents:
            raise ValueError(f"cannot give {num_agents} agents at least one of {n} samples each")
        sizes = np.full(num_agents, n // num_agents, dtype=np.int64)
        sizes[: n % num_agents] += 1
        return split_by_sizes(rng.permutation(n), sizes)


class QuantitySkewParams(ComponentParams):
    distribution: Literal["lognormal", "powerlaw"] = "lognormal"
    sigma: float = Field(1.0, gt=0, description="lognormal: the log-sizes' standard deviation.")
    exponent: float = Field(1.5, gt=0, description="powerlaw: the Pareto shape (smaller is more skewed).")


class QuantitySkew(Partitioner):
    """IID labels; each agent's share of the data drawn from a log-normal or power law, at least one sample."""

    Params = QuantitySkewParams

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        n = len(labels)
        if n < num_agents:
            raise ValueError(f"cannot give {num_agents} agents at least one of {n} samples each")
        if self.params.distribution == "lognormal":
            weights = rng.lognormal(0.0, self.params.sigma, num_agents)
        else:
            weights = rng.pareto(self.params.exponent, num_agents) + 1.0
        sizes = 1 + rng.multinomial(n - num_agents, weights / weights.sum())
        return split_by_sizes(rng.permutation(n), sizes.astype(np.int64))
