"""The protocol's run-level hooks: check_run before round 1 (bad input, exit code 2), the samplers'
cohort size it reads, run_record into records.json, and a strategy's Aggregate.kept reaching
on_round_end as context.kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flcore import hookimpl
from flcore.aggregation import Aggregator, weighted_mean_delta
from flcore.config import validate_config
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import Aggregate
from flcore.server_plugin import ServerPlugin
from flcore.testing import build

SEEN: dict = {}


class Checks(ServerPlugin):
    """Keeps the plan it is shown; refuses runs with fewer than 10 agents."""

    def check_run(self, plan):
        SEEN["plan"] = plan
        if plan.agents < 10:
            raise ValueError(f"needs 10 agents, got {plan.agents}")

    def run_record(self):
        return {"checked": True, "agents": SEEN["plan"].agents}

    def on_round_end(self, context, accepted):
        SEEN.setdefault("kept", []).append(context.kept)


class KeepsTwo(Aggregator):
    """FedAvg that says it kept the first two updates (half each)."""

    def aggregate(self, global_vector, updates, context):
        return Aggregate(global_vector + weighted_mean_delta(updates), kept={u.agent_id: 0.5 for u in updates[:2]})


class Plugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("checks", Checks, "Test.")

    @staticmethod
    @hookimpl
    def register_aggregators(register):
        register("keeps_two", KeepsTwo, "Test.")


def run(tmp_path, config):
    return Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path / "runs")


def test_check_run_sees_the_plan_and_its_value_error_is_bad_input_before_any_work(tmp_path, tiny_config):
    tiny_config["federation"].update(server_plugins=["checks"], sampler={"name": "uniform", "count": 3})
    with pytest.raises(ConfigError, match=r"federation.server_plugins\[0\] 'checks' cannot be used here: needs 10 "
                                          r"agents, got 8"):
        run(tmp_path, tiny_config)
    plan = SEEN["plan"]
    assert (plan.agents, plan.rounds, plan.cohort, plan.data.num_classes) == (8, 3, 3, 10)
    assert not list((tmp_path / "runs").glob("*")), "a refused run leaves no folder"


def test_run_records_go_to_records_json_and_kept_reaches_on_round_end(tmp_path, tiny_config):
    tiny_config["federation"].update(agents=10, rounds=2, server_plugins=["checks"], aggregator="keeps_two",
                                     sampler={"name": "uniform", "count": 4})
    SEEN.clear()
    result = run(tmp_path, tiny_config)
    records = json.loads((result.run_dir / "records.json").read_text())
    assert records == {"server_plugin[0]:checks": {"checked": True, "agents": 10}}
    assert [sorted(k.values()) for k in SEEN["kept"]] == [[0.5, 0.5], [0.5, 0.5]]


def test_a_run_whose_components_record_nothing_writes_no_records_file(tmp_path, tiny_config):
    tiny_config["federation"]["rounds"] = 1
    result = run(tmp_path, tiny_config)
    assert not (result.run_dir / "records.json").exists()


@pytest.mark.parametrize("name,params", [("uniform", {"fraction": 0.3}), ("uniform", {"count": 7}), ("all", {}),
                                         ("weighted", {"count": 5}), ("round_robin", {"fraction": 0.25})])
def test_each_built_in_sampler_says_the_most_agents_it_selects(name, params):
    from flcore.agents import AgentField, AgentPopulation

    sampler = build("sampler", name, **params)
    population = AgentPopulation(Partition.from_shards([np.arange(1 + a % 4) for a in range(20)]),
                                 [AgentField("selected_count", 0, "int64")])
    sizes = [len(sampler.sample(population, r, np.random.default_rng(r))) for r in range(6)]
    assert sampler.cohort_size(20) == max(sizes)
