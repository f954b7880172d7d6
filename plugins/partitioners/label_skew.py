"""Label-skew partitions: exactly k classes per agent, or Dirichlet(alpha) class shares."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


def _indices_by_class(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class's sample indices, shuffled with ``rng``."""
    shuffled = rng.permutation(len(labels))
    ordered = shuffled[np.argsort(labels[shuffled], kind="stable")]
    classes, starts = np.unique(labels[ordered], return_index=True)
    return np.split(ordered, starts[1:])


class KClassesParams(ComponentParams):
    k: int = Field(2, gt=0, description="Classes per agent.")


class KClasses(Partitioner):
    """Agent ``i`` holds classes ``perm[(i*k + j) % C]`` for ``j < k``; each class is split evenly
    among its holders. Classes that no agent holds (when ``agents * k < C``) are left out."""

    Params = KClassesParams

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        per_class = _indices_by_class(labels, rng)
        num_classes = len(per_class)
        k = self.params.k
        if k > num_classes:
            raise ValueError(f"k={k} classes per agent, but the dataset has only {num_classes}")
        class_order = rng.permutation(num_classes)
        holders_of = [[] for _ in range(num_classes)]
        for agent in range(num_agents):
            for j in range(k):
                holders_of[class_order[(agent * k + j) % num_classes]].append(agent)
        assignment = np.full(len(labels), -1, dtype=np.int64)
        for cls, holders in enumerate(holders_of):
            if holders:
                parts = np.array_split(per_class[cls], len(holders))
                for agent, part in zip(holders, parts):
                    assignment[part] = agent
        return Partition.from_assignment(assignment, num_agents)


class DirichletParams(ComponentParams):
    alpha: float = Field(0.5, gt=0, description="Concentration: small is skewed, large is near IID.")
    min_samples: int = Field(1, ge=0, description="Redraw until every agent holds at least this many.")
    max_tries: int = Field(100, gt=0)


class Dirichlet(Partitioner):
    """For each class, agents' shares ~ Dirichlet(alpha); counts drawn multinomially (Hsu et al. 2019)."""

    Params = DirichletParams

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        per_class = _indices_by_class(labels, rng)
        for _ in range(self.params.max_tries):
            assignment = np.empty(len(labels), dtype=np.int64)
            for indices in per_class:
                shares = rng.dirichlet(np.full(num_agents, self.params.alpha))
                counts = rng.multinomial(len(indices), shares)
                assignment[indices] = np.repeat(np.arange(num_agents), counts)
            partition = Partition.from_assignment(assignment, num_agents)
            if partition.sizes.min() >= self.params.min_samples:
                return partition
        raise ValueError(
            f"dirichlet(alpha={self.params.alpha}) could not give all {num_agents} agents at least "
            f"{self.params.min_samples} samples in {self.params.max_tries} tries; raise alpha or lower min_samples"
        )
