"""Samplers: distinct ids, counts, size weighting, round-robin coverage, independence from training."""

from __future__ import annotations

import numpy as np

from flcore.agents import AgentPopulation
from flcore.partition import Partition
from flcore.registry import discover


def build(name, **params):
    component = discover().resolve("sampler", name)
    return component.load()(component.params_model()(**params))


def population(sizes):
    return AgentPopulation(Partition.from_shards([np.arange(n) for n in sizes]))


def test_uniform_by_fraction_and_count():
    pop = population([5] * 100)
    chosen = build("uniform", fraction=0.1).sample(pop, 0, np.random.default_rng(1))
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert len(build("uniform", count=7).sample(pop, 0, np.random.default_rng(1))) == 7
    assert len(build("uniform", count=1000).sample(pop, 0, np.random.default_rng(1))) == 100
    same = build("uniform", fraction=0.1).sample(pop, 0, np.random.default_rng(1))
    assert np.array_equal(chosen, same)


def test_uniform_is_uniform():
    pop = population([5] * 20)
    sampler = build("uniform", count=5)
    counts = np.zeros(20)
    rng = np.random.default_rng(0)
    for r in range(4000):
        counts[sampler.sample(pop, r, rng)] += 1
    expected = 4000 * 5 / 20
    assert np.abs(counts - expected).max() < 0.1 * expected


def test_weighted_prefers_agents_with_more_data():
    pop = population([1] * 9 + [1000])
    sampler = build("weighted", count=1)
    rng = np.random.default_rng(0)
    picks = [int(sampler.sample(pop, r, rng)[0]) for r in range(200)]
    assert picks.count(9) > 180


def test_all_and_round_robin():
    pop = population([3] * 10)
    assert build("all").sample(pop, 0, None).tolist() == list(range(10))
    rr = build("round_robin", count=4)
    rounds = [rr.sample(pop, r, None).tolist() for r in range(3)]
    assert rounds == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    restored = build("round_robin", count=4)
    restored.load_state_dict(rr.state_dict())
    assert restored.sample(pop, 3, None).tolist() == [2, 3, 4, 5]


def test_sampling_does_not_depend_on_how_much_training_consumed(tmp_path, tiny_config):
    from flcore.config import validate_config
    from flcore.engine.rundir import read_csv
    from flcore.experiment import Experiment

    counts = []
    for epochs in (1, 2):
        tiny_config["training"]["epochs"] = epochs
        result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / str(epochs))
        counts.append([row["times_selected"] for row in read_csv(result.run_dir / "sampling.csv")])
    assert counts[0] == counts[1]
