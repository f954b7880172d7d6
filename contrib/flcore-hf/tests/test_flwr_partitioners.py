"""Flower Datasets' partitioners wrapped as flcore partitioners split exactly as the schemes themselves do."""

from __future__ import annotations

import numpy as np
import pytest
from flcore_hf.partitioners import SCHEMES, derive_seed

from flcore.registry import discover

LABELS = np.random.default_rng(0).integers(0, 10, size=900)


def _flower_split(cls, labels, **kwargs):
    """The scheme's own output: Flower's partitioner on a Hugging Face dataset of the labels."""
    import datasets
    import flwr_datasets.partitioner as flwr

    partitioner = getattr(flwr, cls)(**kwargs)
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels, "position": np.arange(len(labels))})
    return [np.asarray(partitioner.load_partition(k)["position"]) for k in range(partitioner.num_partitions)]


def _flcore_split(name, labels, agents, seed=7, groups=None, **params):
    component = discover().resolve("partitioner", name)
    partitioner = component.load()(component.params_model()(**params))
    partition = partitioner.split(labels, agents, np.random.default_rng(seed), groups)
    return [partition.shard(k) for k in range(partition.num_agents)]


@pytest.mark.parametrize(("name", "cls", "params", "seeded"), [
    ("flwr_iid", "IidPartitioner", {}, False),
    ("flwr_dirichlet", "DirichletPartitioner", {"alpha": 0.3, "min_partition_size": 5}, True),
    ("flwr_pathological", "PathologicalPartitioner", {"num_classes_per_partition": 2}, True),
    ("flwr_shard", "ShardPartitioner", {"num_shards_per_partition": 3}, True),
    ("flwr_exponential", "ExponentialPartitioner", {}, False),
    ("flwr_continuous", "ContinuousPartitioner", {"strictness": 0.7}, True),
])
def test_a_wrapped_scheme_splits_exactly_as_flower_does(name, cls, params, seeded):
    agents = 6
    mine = _flcore_split(name, LABELS, agents, **params)
    extra = {"partition_by": "label", "seed": derive_seed(np.random.default_rng(7))} if seeded else {}
    theirs = _flower_split(cls, LABELS, num_partitions=agents, **params, **extra)
    assert len(mine) == len(theirs) == agents
    for k, (a, b) in enumerate(zip(mine, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"agent {k}")


def test_the_seed_comes_from_the_run_so_other_seeds_split_otherwise():
    a = _flcore_split("flwr_dirichlet", LABELS, 6, seed=1, alpha=0.3)
    b = _flcore_split("flwr_dirichlet", LABELS, 6, seed=2, alpha=0.3)
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(len(LABELS)))  # every sample, once


def test_sizes_and_natural_groups():
    sizes = [100, 200, 300, 300]
    assert [len(s) for s in _flcore_split("flwr_size", LABELS, 4, partition_sizes=sizes)] == sizes
    inner = _flcore_split("flwr_inner_dirichlet", LABELS, 4, alpha=1.0)
    assert [len(s) for s in inner] == [225] * 4  # equal sizes by default
    groups = np.repeat(np.arange(5), 180)
    shards = _flcore_split("flwr_natural_id", LABELS, 5, groups=groups)
    assert sorted(tuple(np.unique(groups[s])) for s in shards) == [(g,) for g in range(5)]
    with pytest.raises(ValueError, match="makes 5 partitions of this dataset, but federation.agents = 3"):
        _flcore_split("flwr_natural_id", LABELS, 3, groups=groups)
    with pytest.raises(ValueError, match="needs a dataset that records a group"):
        _flcore_split("flwr_grouped_natural_id", LABELS, 3, group_size=2)


def test_every_wrapped_scheme_is_registered_and_documented():
    registry = discover()
    for name, cls in SCHEMES.items():
        component = registry.resolve("partitioner", name)
        assert component.provider == "flcore-hf" and component.load() is cls and cls.__doc__
    assert len(SCHEMES) == 13  # Flower's 16, less the two vertical ones and IdToSizeFncPartitioner
