"""Partitions of a training set into agents' shards, and the partitioner interface.

A :class:`Partition` stores every shard in one index array with offsets (compressed rows), so that
100,000 agents cost two integer arrays rather than 100,000 Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flcore.params import ComponentParams, NoParams


@dataclass(frozen=True)
class Partition:
    """Shards of a dataset: agent ``k`` holds ``indices[offsets[k]:offsets[k + 1]]``."""

    indices: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_shards(cls, shards: Sequence[np.ndarray]) -> Partition:
        """Build a partition from one index array per agent."""
        sizes = np.fromiter((len(s) for s in shards), dtype=np.int64, count=len(shards))
        offsets = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        indices = np.concatenate(shards).astype(np.int64) if len(shards) else np.zeros(0, np.int64)
        return cls(indices, offsets)

    @classmethod
    def from_assignment(cls, agent_of_sample: np.ndarray, num_agents: int) -> Partition:
        """Build a partition from each sample's agent (-1 for samples no agent holds)."""
        agent_of_sample = np.asarray(agent_of_sample)
        used = np.flatnonzero(agent_of_sample >= 0)
        order = used[np.argsort(agent_of_sample[used], kind="stable")]
        counts = np.bincount(agent_of_sample[used], minlength=num_agents)
        offsets = np.zeros(num_agents + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(order.astype(np.int64), offsets)

    @property
    def num_agents(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def shard(self, agent: int) -> np.ndarray:
        """The sample indices of one agent (a view, not a copy)."""
        return self.indices[self.offsets[agent] : self.offsets[agent + 1]]

    def label_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """An ``(agents, classes)`` matrix of how many samples of each label each agent holds."""
        agent_of_sample = np.repeat(np.arange(self.num_agents), self.sizes)
        flat = agent_of_sample * num_classes + labels[self.indices]
        return np.bincount(flat, minlength=self.num_agents * num_classes).reshape(self.num_agents, num_classes)

    def statistics(self, labels: np.ndarray, num_classes: int) -> dict[str, float]:
        """Samples and classes per agent, and imbalance, for the run's log."""
        counts = self.label_counts(labels, num_classes)
        sizes = self.sizes
        classes = (counts > 0).sum(axis=1)
        return {
            "agents": float(self.num_agents),
            "samples_total": float(sizes.sum()),
            "samples_min": float(sizes.min()) if len(sizes) else 0.0,
            "samples_mean": float(sizes.mean()) if len(sizes) else 0.0,
            "samples_max": float(sizes.max()) if len(sizes) else 0.0,
            "classes_per_agent_min": float(classes.min()) if len(classes) else 0.0,
            "classes_per_agent_mean": float(classes.mean()) if len(classes) else 0.0,
            "classes_per_agent_max": float(classes.max()) if len(classes) else 0.0,
            "size_imbalance": float(sizes.max() / max(sizes.mean(), 1e-12)) if len(sizes) else 0.0,
        }


class Partitioner:
    """Splits training labels into ``num_agents`` shards; deterministic for a given ``rng``."""

    Params: type[ComponentParams] = NoParams

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    def split(
        self,
        labels: np.ndarray,
        num_agents: int,
        rng: np.random.Generator,
        groups: np.ndarray | None = None,
    ) -> Partition:
        """Return the shards. ``groups`` holds a natural owner (writer, user) per sample, if known."""
        raise NotImplementedError
