"""The round protocol: phases in their documented order, instructions honoured by every backend,
results and failures seen by the strategy, metrics namespaced, per-agent state carried."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore import hookimpl
from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.aggregation import Aggregator, weighted_mean_delta
from flcore.config import validate_config
from flcore.engine.state_store import read_checkpoint
from flcore.errors import ConfigError, RunFailure
from flcore.experiment import Experiment
from flcore.metadata import AgentMetadata
from flcore.protocol import AgentResult, AgentStatus, Aggregate
from flcore.server_plugin import ServerPlugin

CALLS: list[str] = []


class Recording(ServerPlugin):
    """Records every server-side phase it takes part in."""

    def configure_round(self, context, instructions):
        CALLS.append("configure_round")

    def on_results(self, context, results):
        CALLS.append("on_results")

    def process_update(self, context, update):
        CALLS.append("process_update")

    def process_aggregate(self, context, global_vector, aggregate):
        CALLS.append("process_aggregate")

    def on_round_end(self, context, accepted):
        CALLS.append("on_round_end")

    def on_evaluate(self, context, evaluate):
        CALLS.append("on_evaluate")
        context.log(self, "test_acc_again", evaluate(*_test_split(context))["acc"])


def _test_split(context):
    return STASH["x_test"], STASH["y_test"]


STASH: dict = {}


class RecordingAgent(AgentPlugin):
    """Records its lifecycle steps; the per-step ones only at an agent's first step."""

    def on_agent_start(self, agent):
        CALLS.append("on_agent_start")

    def loss_term(self, agent, params, global_params):
        if agent.steps == 0:
            CALLS.append("loss_term")
        return None

    def before_step(self, agent):
        if agent.steps == 0:
            CALLS.append("before_step")

    def on_update(self, agent, result):
        CALLS.append("on_update")


class RecordingStrategy(Aggregator):
    def aggregate(self, global_vector, updates, context):
        CALLS.append("aggregate")
        STASH["failures"] = [(f.agent_id, f.status) for f in context.failures]
        return Aggregate(global_vector + weighted_mean_delta(updates), {"accepted": len(updates)})


class Instructing(ServerPlugin):
    """Gives agents different instructions: two epochs to even ids, a 3-step budget to agent 3,
    half the learning rate to agent 5, and drops agent 1."""

    def configure_round(self, context, instructions):
        for instruction in instructions:
            if instruction.agent_id % 2 == 0:
                instruction.epochs = 2
            if instruction.agent_id == 3:
                instruction.max_steps = 3
            if instruction.agent_id == 5:
                instruction.lr_scale = 0.5
            if instruction.agent_id == 1:
                instruction.participate = False


class CountsRounds(AgentPlugin):
    """Per-agent state: how many times the agent trained, kept in agent.state."""

    vectorizable = True

    def state_fields(self):
        return (AgentField("rounds_trained", 0, "int64"),)

    def on_update(self, agent, result):
        agent.state["rounds_trained"] = agent.state["rounds_trained"] + 1


class BadShape(Aggregator):
    def aggregate(self, global_vector, updates, context):
        return global_vector[:-1]


class NotFinite(Aggregator):
    def aggregate(self, global_vector, updates, context):
        return global_vector * float("nan")


class RefusesEverything(ServerPlugin):
    def check_strategy(self, strategy):
        return f"{type(strategy).__name__} is not mean-based" if not strategy.mean_based else None


class Plugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("recording", Recording, "Test.")
        register("instructing", Instructing, "Test.")
        register("refuses", RefusesEverything, "Test.")

    @staticmethod
    @hookimpl
    def register_agent_plugins(register):
        register("recording_agent", RecordingAgent, "Test.")
        register("counts_rounds", CountsRounds, "Test.")

    @staticmethod
    @hookimpl
    def register_aggregators(register):
        register("recording_strategy", RecordingStrategy, "Test.")
        register("bad_shape", BadShape, "Test.")
        register("not_finite", NotFinite, "Test.")


def run(tmp_path, config, name="run", **kwargs):
    return Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path / name, **kwargs)


def test_phases_run_in_the_documented_order(tmp_path, tiny_config):
    from flcore_plugins.datasets.digits import Digits, DigitsParams

    data = Digits(DigitsParams())
    STASH.update(x_test=data.x_test, y_test=data.y_test)
    tiny_config["federation"].update(rounds=1, sampler={"name": "uniform", "count": 2}, aggregator="recording_strategy",
                                     server_plugins=["recording"], agent_plugins=["recording_agent"])
    CALLS.clear()
    result = run(tmp_path, tiny_config)
    agent = ["on_agent_start", "loss_term", "before_step", "on_update"]
    # not streaming (the strategy does not stream): results are held for on_results, then processed
    assert CALLS == ["configure_round", *agent, *agent, "on_results", "process_update", "process_update",
                     "aggregate", "process_aggregate", "on_round_end", "on_evaluate"]
    row = result.history[0]
    assert row["recording_strategy/accepted"] == 2
    assert row["recording/test_acc_again"] == pytest.approx(row["test_acc"])
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["round", "selected", "completed", "partial", "dropped", "deferred", "skipped"]
    assert header[-2:] == ["recording_strategy/accepted", "recording/test_acc_again"]


@pytest.mark.parametrize("backend", ["sequential", {"name": "vectorized", "strict": True}])
def test_instructions_are_honoured_and_failures_reach_the_strategy(tmp_path, tiny_config, backend):
    tiny_config["federation"].update(rounds=1, sampler="all", aggregator="recording_strategy",
                                     server_plugins=["instructing"], backend=backend)
    tiny_config["training"]["batch_size"] = 16
    result = run(tmp_path, tiny_config)
    agents = {int(r["agent"]): r for r in _agent_rows(result.run_dir)}
    epochs = {}
    for record in _agent_rows(result.run_dir):
        epochs[int(record["agent"])] = epochs.get(int(record["agent"]), 0) + 1
    assert 1 not in agents, "a dropped agent does not train"
    assert epochs == {0: 2, 2: 2, 3: 1, 4: 2, 5: 1, 6: 2, 7: 1}
    assert int(float(agents[3]["samples"])) == 3 * 16  # the step budget stops it after 3 batches
    assert STASH["failures"] == [(1, AgentStatus.DROPPED)]
    assert result.history[0]["dropped"] == 1 and result.history[0]["completed"] == 7


def test_instructions_give_the_same_model_on_sequential_and_vectorized(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=2, sampler="all", server_plugins=["instructing"],
                                     partitioner={"name": "quantity_skew", "sigma": 0.5})
    tiny_config["training"]["batch_size"] = 16
    a = run(tmp_path, tiny_config, "s")
    tiny_config["federation"]["backend"] = {"name": "vectorized", "strict": True}
    b = run(tmp_path, tiny_config, "v")
    for name, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], value, rtol=1e-4, atol=1e-5)


def _agent_rows(run_dir):
    from flcore.engine.rundir import read_csv

    return read_csv(next((run_dir / "logs" / "agents").glob("version_*/metrics.csv")))


@pytest.mark.parametrize("backend", ["sequential", {"name": "vectorized", "strict": True}])
def test_per_agent_state_is_carried_checkpointed_and_resumed(tmp_path, tiny_config, backend):
    tiny_config["federation"].update(rounds=4, agent_plugins=["counts_rounds"], backend=backend)
    straight = run(tmp_path, tiny_config, "a")
    columns = read_checkpoint(straight.run_dir)["columns"]
    np.testing.assert_array_equal(columns["rounds_trained"], columns["selected_count"])
    assert columns["rounds_trained"].sum() == 4 * 4
    stopped = run(tmp_path, tiny_config, "b", stop_after_rounds=2)
    resumed = Experiment(validate_config(tiny_config), plugins=[("test", Plugins)]).run(resume_dir=stopped.run_dir)
    np.testing.assert_array_equal(read_checkpoint(resumed.run_dir)["columns"]["rounds_trained"],
                                  columns["rounds_trained"])
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name


@pytest.mark.parametrize("strategy,problem", [("bad_shape", r"a vector of shape \(2409,\)"), ("not_finite", "non-finite values")])
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_strategy_returning_a_wrong_vector_is_named_with_its_distribution(tmp_path, tiny_config, strategy, problem,
                                                                             policy):
    tiny_config["federation"].update(aggregator=strategy, on_agent_failure=policy)
    with pytest.raises(RunFailure, match=rf"aggregator '{strategy}' \(from test local\) returned {problem} in round 1"):
        run(tmp_path, tiny_config)
    assert not list(tmp_path.glob("*/*/model.pt")), "no model is written from a broken aggregate"


def test_a_server_plugin_refuses_a_strategy_it_cannot_wrap(tmp_path, tiny_config):
    tiny_config["federation"].update(aggregator="krum", server_plugins=["refuses"])
    with pytest.raises(ConfigError, match=r"server_plugin 'refuses' \(from test local\) cannot wrap aggregator 'krum' "
                                          r"\(from flcore .*\): Krum is not mean-based"):
        run(tmp_path, tiny_config)
    tiny_config["federation"]["aggregator"] = "fedavg"
    assert run(tmp_path, tiny_config, "ok").history


def test_a_strategy_brings_the_agent_plugin_it_requires_and_a_listed_one_wins(tiny_config):
    tiny_config["federation"]["aggregator"] = {"name": "fedprox", "mu": 0.3}
    required = Experiment(validate_config(tiny_config)).components["agent_plugin"]
    assert [(r.component.name, r.params.mu) for r in required] == [("proximal", 0.3)]
    tiny_config["federation"]["agent_plugins"] = [{"name": "proximal", "mu": 0.7}]
    listed = Experiment(validate_config(tiny_config)).components["agent_plugin"]
    assert [(r.component.name, r.params.mu) for r in listed] == [("proximal", 0.7)]


def test_a_required_component_with_bad_parameters_names_who_requires_it(tiny_config):
    tiny_config["federation"]["aggregator"] = {"name": "fedprox", "mu": -1}
    with pytest.raises(ConfigError, match="federation.aggregator.mu"):
        Experiment(validate_config(tiny_config))


class _Streams(AgentMetadata):
    """Draws from its own seeded streams at setup and per round."""

    def state_fields(self):
        return (AgentField("draw", 0.0, "float64"),)

    def setup(self, population, rng):
        population.update("draw", np.arange(len(population)), rng.random(len(population)))

    def on_round_end(self, context, accepted):
        STASH.setdefault("round_draws", []).append(float(context.rng(self).random()))


def test_component_streams_are_seeded_per_component_and_round(tmp_path, tiny_config):
    class Meta:
        @staticmethod
        @hookimpl
        def register_agent_metadata(register):
            register("streams", _Streams, "Test.")

    tiny_config["federation"].update(rounds=2, agent_metadata=["streams"])
    draws = []
    for name in ("a", "b"):
        STASH["round_draws"] = []
        result = Experiment(validate_config(tiny_config), plugins=[("m", Meta)]).run(out_dir=tmp_path / name)
        draws.append((read_checkpoint(result.run_dir)["columns"]["draw"], STASH["round_draws"]))
    np.testing.assert_array_equal(draws[0][0], draws[1][0])
    assert draws[0][1] == draws[1][1] and draws[0][1][0] != draws[0][1][1]
    assert len(set(draws[0][0].tolist())) == len(draws[0][0])


class EvenOnly(ServerPlugin):
    """Only agents with even ids are online; a second component then removes agent 0."""

    def availability(self, context, available):
        return np.arange(0, len(context.population), 2)


class NotZero(ServerPlugin):
    def availability(self, context, available):
        return available[available != 0]


class HoldsOneRound(ServerPlugin):
    """Defers every fresh update by one round (an asynchronous clock would do this), then hands the
    held ones to the strategy next round."""

    def __init__(self, params):
        super().__init__(params)
        self.held = []

    def on_results(self, context, results):
        fresh = [r for r in results if r.status.accepted]
        held, self.held = self.held, []
        for result in fresh:
            self.held.append(AgentResult(result.agent_id, result.delta.clone(), result.num_samples,
                                         dict(result.metrics)))
            result.status = AgentStatus.DEFERRED
        results.extend(held)


class TrainsOnServer(ServerPlugin):
    """Trains the global model on a 'root' set of ten samples the server holds, every round."""

    def on_round_end(self, context, accepted):
        result = context.train(np.arange(10))
        STASH.setdefault("server", []).append((result.agent_id, result.num_samples, float(result.delta.norm())))

    def on_evaluate(self, context, evaluate):
        zero = torch.zeros_like(context.global_vector)
        context.log(self, "zero_model_acc", evaluate(context.data.x_test, context.data.y_test, vector=zero)["acc"])


class MorePlugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("even_only", EvenOnly, "Test.")
        register("not_zero", NotZero, "Test.")
        register("holds_one_round", HoldsOneRound, "Test.")
        register("trains_on_server", TrainsOnServer, "Test.")


def run_more(tmp_path, config, name="run"):
    return Experiment(validate_config(config), plugins=[("more", MorePlugins)]).run(out_dir=tmp_path / name)


def test_availability_components_narrow_who_the_sampler_may_choose(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=3, sampler={"name": "uniform", "count": 3},
                                     server_plugins=["even_only", "not_zero"])
    result = run_more(tmp_path, tiny_config)
    from flcore.engine.rundir import read_csv

    chosen = {int(r["agent"]) for r in read_csv(result.run_dir / "sampling.csv") if int(r["times_selected"])}
    assert chosen == {2, 4, 6}  # the only available agents, every round
    assert [row["selected"] for row in result.history] == [3, 3, 3]


def test_deferred_updates_reach_the_strategy_later_and_are_not_idle_rounds(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=3, stall_rounds=1, server_plugins=["holds_one_round"])
    result = run_more(tmp_path, tiny_config)
    assert [row["deferred"] for row in result.history] == [4, 4, 4]
    assert [row.get("train_loss") is None for row in result.history] == [True, False, False]
    assert result.history[0]["test_acc"] == result.history[0]["test_acc"]  # the model is evaluated


def test_the_server_can_train_on_its_own_samples_and_evaluate_any_weights(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=2, server_plugins=["trains_on_server"])
    STASH["server"] = []
    result = run_more(tmp_path, tiny_config)
    assert [(a, n) for a, n, _ in STASH["server"]] == [(-1, 10), (-1, 10)]
    assert all(norm > 0 for _, _, norm in STASH["server"])
    assert all(row["trains_on_server/zero_model_acc"] < row["test_acc"] for row in result.history)
    plain = run(tmp_path, {**tiny_config, "federation": {**tiny_config["federation"], "server_plugins": []}}, "plain")
    for name, value in plain.state_dict.items():  # server training and evaluation leave the run unchanged
        assert torch.equal(result.state_dict[name], value), name
