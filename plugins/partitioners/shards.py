"""TorchFL's non-IID split, kept for fidelity with the paper's Figure 6.

``niid_factor`` is the number of shards per agent, not the number of classes: the training set is
sorted by label (a seeded shuffle first, so ties are broken reproducibly), cut into
``agents * niid_factor`` equal shards (the remainder is dropped), and every agent receives
``niid_factor`` shards drawn without replacement. A shard can straddle a class boundary, so an agent
may hold more classes than ``niid_factor``; use ``k_classes`` or ``dirichlet`` to control classes.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


class NIIDParams(ComponentParams):
    niid_factor: int = Field(2, gt=0, description="Shards per agent of the label-sorted training set.")


class NIIDShards(Partitioner):
    """Shards of the label-sorted index, ``niid_factor`` per agent."""

    Params = NIIDParams

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        factor = self.params.niid_factor
        shards = num_agents * factor
        shard_size = len(labels) // shards
        if shard_size == 0:
            raise ValueError(
                f"niid_factor={factor} with {num_agents} agents makes {shards} shards, more than the "
                f"{len(labels)} samples"
            )
        shuffled = rng.permutation(len(labels))
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        blocks = by_label[: shards * shard_size].reshape(shards, shard_size)
        chosen = blocks[rng.permutation(shards)].reshape(num_agents, factor * shard_size)
        offsets = np.arange(num_agents + 1, dtype=np.int64) * factor * shard_size
        return Partition(chosen.reshape(-1).astype(np.int64), offsets)
