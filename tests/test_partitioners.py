"""Property tests of every partitioner: disjoint shards, the documented union, sizes, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flcore.partition import Partition
from flcore.registry import discover


def build(name, **params):
    component = discover().resolve("partitioner", name)
    return component.load()(component.params_model()(**params))


def labels_strategy():
    return st.tuples(st.integers(2, 12), st.integers(40, 400), st.integers(0, 2**31 - 1)).map(
        lambda t: np.random.default_rng(t[2]).integers(0, t[0], size=t[1])
    )


def split(name, labels, agents, seed=0, groups=None, **params):
    return build(name, **params).split(labels, agents, np.random.default_rng(seed), groups)


def assert_disjoint(partition: Partition, n: int) -> None:
    assert len(np.unique(partition.indices)) == len(partition.indices)
    assert partition.indices.min(initial=0) >= 0 and partition.indices.max(initial=0) < n


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy(), agents=st.integers(1, 30), seed=st.integers(0, 1000))
def test_iid_uses_every_sample_once_in_near_equal_shards(labels, agents, seed):
    p = split("iid", labels, agents, seed)
    assert_disjoint(p, len(labels))
    assert sorted(p.indices.tolist()) == list(range(len(labels)))
    assert p.sizes.max() - p.sizes.min() <= 1
    assert np.array_equal(p.indices, split("iid", labels, agents, seed).indices)


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy(), agents=st.integers(1, 10), factor=st.integers(1, 4), seed=st.integers(0, 1000))
def test_niid_gives_each_agent_factor_shards_of_the_label_sorted_index(labels, agents, factor, seed):
    shards = agents * factor
    if len(labels) < shards:
        return
    p = split("niid", labels, agents, seed, niid_factor=factor)
    assert_disjoint(p, len(labels))
    shard_size = len(labels) // shards
    assert (p.sizes == factor * shard_size).all()  # equal sizes; the remainder is dropped
    assert len(p.indices) == shards * shard_size
    # every block is one window of the label-sorted order, and every window is given out once
    from collections import Counter

    sorted_labels = np.sort(labels)
    windows = Counter(tuple(sorted_labels[b * shard_size:(b + 1) * shard_size]) for b in range(shards))
    blocks = Counter(tuple(np.sort(labels[block])) for a in range(agents)
                     for block in p.shard(a).reshape(factor, shard_size))
    assert blocks == windows
    assert np.array_equal(p.indices, split("niid", labels, agents, seed, niid_factor=factor).indices)


def test_niid_factor_bounds_shards_not_classes_as_documented():
    labels = np.repeat(np.arange(10), 5000)  # CIFAR-10 shaped
    p = split("niid", labels, 5, niid_factor=1)
    classes = (p.label_counts(labels, 10) > 0).sum(axis=1)
    assert (classes == 2).all()  # one shard of 10,000 sorted labels spans two classes
    more = (split("niid", labels, 5, niid_factor=5).label_counts(labels, 10) > 0).sum(axis=1)
    assert more.mean() > classes.mean()


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy(), agents=st.integers(1, 20), k=st.integers(1, 4), seed=st.integers(0, 1000))
def test_k_classes_gives_exactly_k_classes(labels, agents, k, seed):
    classes = len(np.unique(labels))
    if k > classes:
        with pytest.raises(ValueError, match="classes per agent"):
            split("k_classes", labels, agents, seed, k=k)
        return
    p = split("k_classes", labels, agents, seed, k=k)
    assert_disjoint(p, len(labels))
    held = (p.label_counts(labels, labels.max() + 1) > 0).sum(axis=1)
    assert (held <= k).all()
    # every class that some agent holds is used in full
    held_classes = np.unique(labels[p.indices])
    assert np.isin(labels, held_classes).sum() == len(p.indices)
    if agents * k >= classes:
        assert len(p.indices) == len(labels)


@settings(max_examples=30, deadline=None)
@given(labels=labels_strategy(), agents=st.integers(1, 10), alpha=st.floats(0.05, 100), seed=st.integers(0, 1000))
def test_dirichlet_uses_every_sample_once(labels, agents, alpha, seed):
    try:
        p = split("dirichlet", labels, agents, seed, alpha=alpha, min_samples=0)
    except ValueError:
        return
    assert_disjoint(p, len(labels))
    assert len(p.indices) == len(labels)
    assert np.array_equal(p.indices, split("dirichlet", labels, agents, seed, alpha=alpha, min_samples=0).indices)


def test_dirichlet_alpha_controls_label_skew():
    labels = np.repeat(np.arange(10), 1000)
    def mean_classes(alpha):
        p = split("dirichlet", labels, 20, alpha=alpha, min_samples=1)
        return ((p.label_counts(labels, 10) / p.sizes[:, None]) > 0.05).sum(axis=1).mean()
    assert mean_classes(0.05) < 3 < 9 < mean_classes(100)


def test_dirichlet_min_samples_that_cannot_be_met_says_so():
    with pytest.raises(ValueError, match="at least 1000 samples"):
        split("dirichlet", np.zeros(100, dtype=int), 5, min_samples=1000, max_tries=3)


@settings(max_examples=30, deadline=None)
@given(labels=labels_strategy(), agents=st.integers(1, 30), seed=st.integers(0, 1000),
       distribution=st.sampled_from(["lognormal", "powerlaw"]))
def test_quantity_skew_uses_every_sample_and_gives_each_agent_one(labels, agents, seed, distribution):
    p = split("quantity_skew", labels, agents, seed, distribution=distribution)
    assert_disjoint(p, len(labels))
    assert len(p.indices) == len(labels) and p.sizes.min() >= 1


def test_quantity_skew_sizes_are_skewed():
    p = split("quantity_skew", np.zeros(100_000, dtype=int), 100, sigma=2.0)
    assert p.sizes.max() > 5 * np.median(p.sizes)


def test_natural_gives_one_agent_per_group():
    groups = np.array([5, 5, 7, 9, 9, 9, 7])
    p = split("natural", np.zeros(7, dtype=int), 3, groups=groups)
    assert [sorted(p.shard(a).tolist()) for a in range(3)] == [[0, 1], [2, 6], [3, 4, 5]]
    subset = split("natural", np.zeros(7, dtype=int), 2, groups=groups)
    assert all(len(np.unique(groups[subset.shard(a)])) == 1 for a in range(2))
    with pytest.raises(ValueError, match="only 3 groups"):
        split("natural", np.zeros(7, dtype=int), 4, groups=groups)
    with pytest.raises(ValueError, match="group"):
        split("natural", np.zeros(7, dtype=int), 2)


def test_partition_statistics():
    labels = np.array([0, 0, 1, 1, 2, 2])
    p = Partition.from_shards([np.array([0, 1, 2]), np.array([3, 4, 5])])
    np.testing.assert_array_equal(p.label_counts(labels, 3), [[2, 1, 0], [0, 1, 2]])
    stats = p.statistics(labels, 3)
    assert stats["classes_per_agent_mean"] == 2 and stats["samples_total"] == 6


def test_partition_command_prints_statistics_and_draws_figure_6(tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from flcore.cli import main

    png = tmp_path / "fig6.png"
    result = CliRunner().invoke(main, ["partition", "--set", "federation.partitioner={name: niid, niid_factor: 1}",
                                       "--set", "federation.agents=5", "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.splitlines()[0])
    counts = np.array(data["label_counts"])
    assert counts.shape == (5, 10) and data["statistics"]["classes_per_agent_max"] <= 3
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 200
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10  # bars in several colours, not a blank canvas
