"""Power-of-choice: honours the sampler interface, prefers lossy agents, runs in an experiment."""

from __future__ import annotations

import numpy as np
import pytest

from flcore.agents import AgentField, AgentPopulation
from flcore.errors import ConfigError
from flcore.partition import Partition
from flcore.testing import build, check_sampler, run_tiny_experiment, tiny_config


def test_power_of_choice_honours_the_sampler_interface():
    check_sampler("power_of_choice", candidates=8, count=3)


def test_it_keeps_the_candidates_with_the_highest_loss():
    population = AgentPopulation(Partition.from_shards([np.arange(10)] * 6),
                                 [AgentField("last_loss", float("nan"), "float32")])
    population.update("last_loss", np.arange(6), [0.1, 0.9, 0.5, 2.0, 0.2, 0.3])
    chosen = build("sampler", "power_of_choice", candidates=6, count=2).sample(population, 0, np.random.default_rng(0))
    assert chosen.tolist() == [1, 3]
    population.set("last_loss", 4, np.nan)  # never trained: explored first
    chosen = build("sampler", "power_of_choice", candidates=6, count=2).sample(population, 0, np.random.default_rng(0))
    assert chosen.tolist() == [3, 4]


def test_count_above_candidates_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="count .* must not exceed candidates"):
        run_tiny_experiment(tmp_path, tiny_config(sampler={"name": "power_of_choice", "candidates": 2, "count": 3}))


def test_it_brings_the_participation_metadata_it_reads():
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    experiment = Experiment(validate_config(tiny_config(sampler="power_of_choice")))
    assert [r.component.qualified_name for r in experiment.components["agent_metadata"]] == ["flcore:participation"]


def test_it_runs_an_experiment(tmp_path):
    result = run_tiny_experiment(tmp_path, tiny_config(sampler={"name": "power_of_choice", "candidates": 6, "count": 3},
                                                       rounds=4))
    assert [row["selected"] for row in result.history] == [3, 3, 3, 3]
    assert result.history[-1]["test_acc"] > 0.5
