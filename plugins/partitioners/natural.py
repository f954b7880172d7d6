"""Natural partitions: one agent per writer or user, where the dataset records them."""

from __future__ import annotations

import numpy as np

from flcore.partition import Partition, Partitioner


class Natural(Partitioner):
    """Agent ``k`` holds every sample of the ``k``-th group; with fewer agents than groups, a seeded
    random subset of groups is used (their other samples are left out)."""

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        if groups is None:
            raise ValueError("the natural partitioner needs a dataset that records a group (writer, user) per sample")
        unique, group_index = np.unique(groups, return_inverse=True)
        if num_agents > len(unique):
            raise ValueError(f"federation.agents = {num_agents}, but the dataset has only {len(unique)} groups")
        chosen = np.sort(rng.choice(len(unique), size=num_agents, replace=False)) if num_agents < len(unique) \
            else np.arange(len(unique))
        agent_of_group = np.full(len(unique), -1, dtype=np.int64)
        agent_of_group[chosen] = np.arange(num_agents)
        return Partition.from_assignment(agent_of_group[group_index], num_agents)
