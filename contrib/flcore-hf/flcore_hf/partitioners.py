"""Flower Datasets' partitioners as flcore partitioners: their schemes, unchanged.

Each flcore partitioner here builds the Flower Datasets partitioner it names, hands it a Hugging Face
dataset made of the training labels (column ``label``), the natural groups if the dataset has them
(column ``group``) and each sample's index, and reads every partition's indices back. So a scheme
splits exactly as it does in Flower; flcore fills in ``num_partitions`` (``federation.agents``),
``partition_by`` and ``seed`` (drawn from the run's partition stream, so runs stay reproducible).

Not wrapped: the two vertical partitioners (they split columns between parties, not samples between
agents) and ``IdToSizeFncPartitioner`` (its argument is a Python function; ``flwr_size`` takes the
sizes themselves).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


def derive_seed(rng: np.random.Generator) -> int:
    """The seed handed to Flower's partitioner, drawn from the run's partition stream."""
    return int(rng.integers(0, 2**31 - 1))


class FlowerPartitioner(Partitioner):
    """A Flower Datasets partitioner, by class name, with flcore's arguments filled in."""

    flwr_class: ClassVar[str]
    takes: ClassVar[tuple[str, ...]] = ("num_partitions",)  # what flcore supplies: num_partitions, partition_by, seed
    partition_by: ClassVar[str] = "label"

    def arguments(self, num_agents: int, samples: int, seed: int) -> dict[str, Any]:
        supplied = {"num_partitions": num_agents, "partition_by": self.partition_by, "seed": seed}
        return {k: supplied[k] for k in self.takes} | self.params.model_dump()

    def build(self, num_agents: int, samples: int, seed: int) -> Any:
        import flwr_datasets.partitioner as flwr

        return getattr(flwr, self.flwr_class)(**self.arguments(num_agents, samples, seed))

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        from datasets import Dataset

        if self.partition_by == "group" and groups is None:
            raise ValueError(f"{self.flwr_class} needs a dataset that records a group (writer, user) per sample")
        columns = {"label": np.asarray(labels, dtype=np.int64), "index": np.arange(len(labels), dtype=np.int64)}
        if groups is not None:
            columns["group"] = np.asarray(groups)
        partitioner = self.build(num_agents, len(labels), derive_seed(rng))
        partitioner.dataset = Dataset.from_dict(columns)
        if partitioner.num_partitions != num_agents:
            raise ValueError(f"{self.flwr_class} makes {partitioner.num_partitions} partitions of this dataset, "
                             f"but federation.agents = {num_agents}")
        shards = [np.asarray(partitioner.load_partition(k).with_format("numpy")["index"], dtype=np.int64)
                  for k in range(num_agents)]
        return Partition.from_shards(shards)


class DirichletParams(ComponentParams):
    alpha: PositiveFloat | list[PositiveFloat] = Field(description="Dirichlet concentration (one, or one per label).")
    min_partition_size: NonNegativeInt = Field(10, description="Redraw until every agent has this many samples.")
    self_balancing: bool = Field(False, description="Stop giving a label to agents above the average size.")
    shuffle: bool = True


class InnerDirichletParams(ComponentParams):
    alpha: PositiveFloat | list[PositiveFloat] = Field(description="Dirichlet concentration (one, or one per label).")
    partition_sizes: list[NonNegativeInt] | None = Field(None, description="Samples per agent, summing to the "
                                                         "training split's size; default: equal sizes.")
    shuffle: bool = True


class PathologicalParams(ComponentParams):
    num_classes_per_partition: PositiveInt = Field(description="Labels each agent holds.")
    class_assignment_mode: Literal["random", "deterministic", "first-deterministic"] = "random"
    shuffle: bool = True


class ShardParams(ComponentParams):
    num_shards_per_partition: PositiveInt | None = Field(None, description="Shards of the label-sorted data per agent.")
    shard_size: PositiveInt | None = Field(None, description="Samples per shard.")
    keep_incomplete_shard: bool = False
    shuffle: bool = True


class SizeParams(ComponentParams):
    partition_sizes: list[NonNegativeInt] = Field(description="Samples per agent, one entry per agent.")


class GroupedNaturalIdParams(ComponentParams):
    group_size: PositiveInt = Field(description="Natural groups (writers, users) per agent.")
    mode: Literal["allow-smaller", "allow-bigger", "drop-reminder", "strict"] = "allow-smaller"
    sort_unique_ids: bool = False


class ContinuousParams(ComponentParams):
    strictness: float = Field(ge=0, le=1, description="0: IID; 1: sorted by the property.")
    shuffle: bool = True


class DistributionParams(ComponentParams):
    distribution_array: list[list[float]] = Field(description="Per label, the share (or count) of each of its "
                                                  "assignments to agents, as Flower documents it.")
    num_unique_labels_per_partition: PositiveInt
    preassigned_num_samples_per_label: NonNegativeInt
    rescale: bool = True
    shuffle: bool = True


_SEEDED = ("num_partitions", "partition_by", "seed")


class FlwrIid(FlowerPartitioner):
    """Equal IID shards in order (``IidPartitioner``)."""

    flwr_class = "IidPartitioner"


class FlwrDirichlet(FlowerPartitioner):
    """Each label's share per agent drawn from Dirichlet(alpha) (``DirichletPartitioner``)."""

    Params = DirichletParams
    flwr_class, takes = "DirichletPartitioner", _SEEDED


class FlwrInnerDirichlet(FlowerPartitioner):
    """Given agent sizes, the labels within each drawn from Dirichlet(alpha) (``InnerDirichletPartitioner``)."""

    Params = InnerDirichletParams
    flwr_class, takes = "InnerDirichletPartitioner", ("partition_by", "seed")

    def arguments(self, num_agents: int, samples: int, seed: int) -> dict[str, Any]:
        arguments = super().arguments(num_agents, samples, seed)
        if arguments["partition_sizes"] is None:  # equal sizes, as flcore's iid makes them
            arguments["partition_sizes"] = [len(a) for a in np.array_split(np.arange(samples), num_agents)]
        return arguments


class FlwrPathological(FlowerPartitioner):
    """A fixed number of labels per agent (``PathologicalPartitioner``)."""

    Params = PathologicalParams
    flwr_class, takes = "PathologicalPartitioner", _SEEDED


class FlwrShard(FlowerPartitioner):
    """Shards of the label-sorted data per agent, as in the FedAvg paper (``ShardPartitioner``)."""

    Params = ShardParams
    flwr_class, takes = "ShardPartitioner", _SEEDED


class FlwrLinear(FlowerPartitioner):
    """Agent sizes proportional to 1, 2, ..., n (``LinearPartitioner``)."""

    flwr_class = "LinearPartitioner"


class FlwrSquare(FlowerPartitioner):
    """Agent sizes proportional to 1, 4, ..., n^2 (``SquarePartitioner``)."""

    flwr_class = "SquarePartitioner"


class FlwrExponential(FlowerPartitioner):
    """Agent sizes proportional to e, e^2, ..., e^n (``ExponentialPartitioner``)."""

    flwr_class = "ExponentialPartitioner"


class FlwrSize(FlowerPartitioner):
    """Agent sizes given one by one (``SizePartitioner``)."""

    Params = SizeParams
    flwr_class, takes = "SizePartitioner", ()


class FlwrNaturalId(FlowerPartitioner):
    """One agent per natural group, writer or user (``NaturalIdPartitioner``)."""

    flwr_class, takes, partition_by = "NaturalIdPartitioner", ("partition_by",), "group"


class FlwrGroupedNaturalId(FlowerPartitioner):
    """``group_size`` natural groups per agent (``GroupedNaturalIdPartitioner``)."""

    Params = GroupedNaturalIdParams
    flwr_class, takes, partition_by = "GroupedNaturalIdPartitioner", ("partition_by",), "group"


class FlwrContinuous(FlowerPartitioner):
    """Agents along a continuous property, here the label, with a strictness (``ContinuousPartitioner``)."""

    Params = ContinuousParams
    flwr_class, takes = "ContinuousPartitioner", _SEEDED


class FlwrDistribution(FlowerPartitioner):
    """Labels spread by a given distribution array (``DistributionPartitioner``)."""

    Params = DistributionParams
    flwr_class, takes = "DistributionPartitioner", _SEEDED

    def arguments(self, num_agents: int, samples: int, seed: int) -> dict[str, Any]:
        arguments = super().arguments(num_agents, samples, seed)
        arguments["distribution_array"] = np.asarray(arguments["distribution_array"], dtype=np.float64)
        return arguments


#: flcore name -> the class here; each registers as ``flcore_hf.partitioners:<class>``
SCHEMES: dict[str, type[FlowerPartitioner]] = {
    "flwr_iid": FlwrIid, "flwr_dirichlet": FlwrDirichlet, "flwr_inner_dirichlet": FlwrInnerDirichlet,
    "flwr_pathological": FlwrPathological, "flwr_shard": FlwrShard, "flwr_linear": FlwrLinear,
    "flwr_square": FlwrSquare, "flwr_exponential": FlwrExponential, "flwr_size": FlwrSize,
    "flwr_natural_id": FlwrNaturalId, "flwr_grouped_natural_id": FlwrGroupedNaturalId,
    "flwr_continuous": FlwrContinuous, "flwr_distribution": FlwrDistribution,
}
