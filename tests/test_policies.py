"""Round policies on the virtual clock: synchronous, deadline, over-selection, FedProx's stragglers,
FedAsync and FedBuff, against hand computations; determinism and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flcore_plugins.policies.asynchronous import staleness_weight
from hypothesis import given, settings
from hypothesis import strategies as st

from flcore import hookimpl
from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField, AgentPopulation
from flcore.config import validate_config
from flcore.devices import DeviceProfile
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.policy import PolicySetup
from flcore.protocol import ROUND_STREAM, AgentResult, AgentStatus, RoundContext, component_rng
from flcore.server_plugin import ServerPlugin
from flcore.testing import build, check_round_policy, tiny_config

SPEED, DOWN, UP = 40.0, 5000.0, 1000.0  # samples/s, bytes/s
PARAMETERS = 64 * 32 + 32 + 32 * 10 + 10  # the tiny MLP on digits
TRANSFERS = 4 * PARAMETERS / DOWN + 4 * PARAMETERS / UP  # the model down, a dense float32 update up


def constant_devices() -> dict:
    return {"name": "drawn", "compute_speed": {"distribution": "constant", "value": SPEED},
            "download_bandwidth": {"distribution": "constant", "value": DOWN},
            "upload_bandwidth": {"distribution": "constant", "value": UP}}


ROUNDS: list[dict] = []


class Capture(ServerPlugin):
    """Records, after the policy decided, every agent's instruction and result."""

    def on_round_end(self, context, accepted):
        instructions = {i.agent_id: i for i in context.instructions}
        ROUNDS.append({"agents": {r.agent_id: (r.status, r.steps, r.epochs, r.num_samples, instructions[r.agent_id])
                                  for r in [*accepted, *context.failures]}})


class Plugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("capture", Capture, "Test.")


def run(tmp_path, name="run", config=None, **federation):
    ROUNDS.clear()
    config = config or tiny_config(**federation)
    config["federation"].setdefault("server_plugins", []).append("capture")
    return Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path / name, progress=False)


def skewed(**federation) -> dict:
    """Shards of very different sizes, so that agents' times differ."""
    return tiny_config(partitioner={"name": "quantity_skew", "sigma": 1.0}, device_profile=constant_devices(),
                       **federation)


def durations(result) -> list[float]:
    """Each round's virtual seconds, from metrics.csv's clock."""
    return np.diff([0.0] + [row["virtual_seconds"] for row in result.history]).tolist()


@pytest.mark.parametrize("name, params", [
    ("synchronous", {}), ("deadline", {"deadline": 5.0, "late": "keep_partial"}), ("fedasync", {"concurrency": 3}),
    ("fedbuff", {"buffer": 2, "concurrency": 4}),
    # the hand-computed tests below run these through the engine too
    pytest.param("deadline", {"deadline": 6.0}, marks=pytest.mark.slow),
    pytest.param("over_selection", {"keep": 3}, marks=pytest.mark.slow),
    pytest.param("stragglers", {"share": 0.5, "mode": "drop"}, marks=pytest.mark.slow),
])
def test_built_in_policies_pass_the_conformance_check(tmp_path, name, params):
    check_round_policy(name, tmp_path, **params)


def test_synchronous_rounds_last_as_long_as_the_slowest_agent(tmp_path):
    result = run(tmp_path, config=skewed(rounds=3))
    for r, row in enumerate(ROUNDS):
        expected = max(TRANSFERS + n / SPEED for _, _, _, n, _ in row["agents"].values())
        assert durations(result)[r] == pytest.approx(expected, rel=1e-12)
        assert all(status is AgentStatus.COMPLETED for status, *_ in row["agents"].values())


def test_a_deadline_drops_late_agents_and_the_server_waits_until_it(tmp_path):
    deadline = TRANSFERS + 150 / SPEED  # agents with more than 150 samples are late
    result = run(tmp_path, config=skewed(rounds=3, round_policy={"name": "deadline", "deadline": deadline,
                                                                 "server_seconds": 2}))
    late_rounds = 0
    for r, row in enumerate(ROUNDS):
        times = {a: TRANSFERS + n / SPEED for a, (_, _, _, n, _) in row["agents"].items()}
        for agent, (status, *_rest) in row["agents"].items():
            assert status is (AgentStatus.DROPPED if times[agent] > deadline else AgentStatus.COMPLETED)
        late = any(t > deadline for t in times.values())
        late_rounds += late
        expected = 2 + (deadline if late else max(times.values()))
        assert durations(result)[r] == pytest.approx(expected, rel=1e-12)
    assert late_rounds  # the case the test is about happened


def steps_fitting(n: int, epochs: int, batch: int, budget: int) -> tuple[int, int]:
    """Steps (and their samples) of the local loop that fit in ``budget`` samples (the reference)."""
    steps = used = 0
    for _ in range(epochs):
        for start in range(0, n, batch):
            size = min(batch, n - start)
            if used + size > budget:
                return steps, used
            steps, used = steps + 1, used + size
    return steps, used


def test_keep_partial_gives_each_agent_the_steps_that_fit_before_the_deadline(tmp_path):
    config = skewed(rounds=3, round_policy={"name": "deadline", "deadline": TRANSFERS + 5.0, "late": "keep_partial"})
    config["training"].update(epochs=2, batch_size=16)
    result = run(tmp_path, config=config)
    budget = math.floor(5.0 * SPEED)  # samples each agent can process
    partial = 0
    for r, row in enumerate(ROUNDS):
        seconds = []
        for agent, (status, steps, _, n, instruction) in row["agents"].items():
            full = 2 * math.ceil(n / 16)
            fit, used = steps_fitting(n, 2, 16, budget)
            assert steps == min(fit, full), agent
            assert status is (AgentStatus.PARTIAL if fit < full else AgentStatus.COMPLETED)
            assert instruction.deadline == TRANSFERS + 5.0
            partial += fit < full
            seconds.append(TRANSFERS + used / SPEED)
        assert durations(result)[r] == pytest.approx(max(seconds), rel=1e-12)
    assert partial


def test_over_selection_keeps_the_first_k_to_report(tmp_path):
    result = run(tmp_path, config=skewed(rounds=3, round_policy={"name": "over_selection", "keep": 2}))
    for r, row in enumerate(ROUNDS):
        times = sorted((TRANSFERS + n / SPEED, a) for a, (_, _, _, n, _) in row["agents"].items())
        kept = {a for _, a in times[:2]}
        for agent, (status, *_rest) in row["agents"].items():
            assert status is (AgentStatus.COMPLETED if agent in kept else AgentStatus.DROPPED)
        assert durations(result)[r] == pytest.approx(times[1][0], rel=1e-12)


@pytest.mark.parametrize("mode", ["drop", "keep_partial"])
def test_stragglers_are_drawn_as_fedprox_draws_them(tmp_path, mode):
    config = tiny_config(rounds=3, sampler={"name": "uniform", "count": 5},
                         round_policy={"name": "stragglers", "share": 0.6, "mode": mode})
    config["training"]["epochs"] = 5
    run(tmp_path, config=config)
    policy = build("round_policy", "stragglers", share=0.6, mode=mode)
    for r, row in enumerate(ROUNDS):
        agents = sorted(row["agents"])
        rng = component_rng(config["seed"], policy, ROUND_STREAM, r)
        chosen = sorted(rng.choice(5, size=round(0.6 * 5), replace=False).tolist())
        for index, agent in enumerate(agents):
            status, steps, epochs, n, instruction = row["agents"][agent]
            if index not in chosen:
                assert (status, epochs, instruction.epochs) == (AgentStatus.COMPLETED, 5, 5)
            elif mode == "drop":
                assert (status, instruction.participate) == (AgentStatus.DROPPED, False)
            else:
                assert status is AgentStatus.PARTIAL and epochs == instruction.epochs < 5
        if mode == "keep_partial":  # the epochs come from the same stream, in the stragglers' order
            expected = [int(rng.integers(1, 5)) for _ in chosen]
            assert [row["agents"][agents[i]][2] for i in chosen] == expected


def test_stragglers_keeping_partial_work_need_two_epochs(tmp_path):
    with pytest.raises(ConfigError, match="training.epochs must be at least 2"):
        Experiment(tiny_config(round_policy="stragglers")).run(out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_deadline_no_agent_can_meet_exits_2_naming_the_field(tmp_path, tiny_config):
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    tiny_config["federation"].update(device_profile=constant_devices(),
                                     round_policy={"name": "deadline", "deadline": 1.0, "late": "keep_partial"})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "federation.round_policy" in result.output and "'deadline' = 1 s can be met by no agent" in result.output
    assert f"needs {TRANSFERS + 32 / SPEED:.6g} s for a single step" in result.output
    assert not list((tmp_path / "runs").glob("*"))  # the run folder was removed again


# ------------------------------------------------------------------------------------------ async
class Seconds(DeviceProfile):
    """Each agent takes a fixed number of virtual seconds, whatever its work."""

    def __init__(self, seconds: list[float]) -> None:
        self.table = np.asarray(seconds, dtype=np.float64)

    def seconds(self, population, agents, work):
        return self.table[np.asarray(agents)]


def async_policy(name: str, seconds: list[float], **params):
    policy = build("round_policy", name, **params)
    population = AgentPopulation(Partition.from_shards([np.array([a]) for a in range(len(seconds))]))
    policy.prepare(PolicySetup(population, Seconds(seconds), None, 0, 0))
    return policy, population


def step(policy, population, index: int, clock: float, x: torch.Tensor, start: list[int]):
    """One round through the policy's phases; returns the released updates and the new clock."""
    context = RoundContext(index, 10, 0, population, x, clock=clock)
    available = policy.availability(context, None)
    selected = policy.narrow_selection(context, np.array(start, dtype=np.int64))
    results = [AgentResult(a, torch.full((3,), float(a + 1)) * (index + 1), 1) for a in selected.tolist()]
    policy.on_results(context, results)
    assert all(r.status is AgentStatus.DEFERRED and r.delta is None for r in results[:len(selected)])
    return available, selected.tolist(), results[len(selected):], context


def test_fedbuff_by_hand():
    """K = 2, concurrency 3; agent a takes seconds[a]; s(tau) = (1 + tau)^-1/2."""
    policy, population = async_policy("fedbuff", [5, 1, 3, 2, 4, 10], buffer=2, concurrency=3)
    x = torch.zeros(3)
    _, _, released, context = step(policy, population, 0, 0.0, x, [0, 1, 2])  # arrive at 5, 1, 3
    assert [r.agent_id for r in released] == [1, 2] and context.clock == 3
    assert torch.equal(released[0].delta, torch.full((3,), 2.0)) and context.metrics["fedbuff/staleness"] == 0
    available, _, released, context = step(policy, population, 1, 3.0, x, [3, 4])  # arrive at 5 and 7
    assert 0 not in available.tolist()  # still in flight
    assert [r.agent_id for r in released] == [0, 3] and context.clock == 5  # agent 0 started first: ties go to it
    torch.testing.assert_close(released[0].delta, torch.full((3,), 1.0) * 2**-0.5)  # staleness 1
    assert torch.equal(released[1].delta, torch.full((3,), 8.0))
    assert context.metrics["fedbuff/staleness"] == 0.5 and context.metrics["fedbuff/staleness_max"] == 1
    _, _, released, context = step(policy, population, 2, 5.0, x, [1, 5])  # arrive at 6 and 15
    assert [r.agent_id for r in released] == [1, 4] and context.clock == 7
    torch.testing.assert_close(released[1].delta, torch.full((3,), 10.0) * 2**-0.5)


def test_fedbuff_starts_a_random_subset_of_the_sampled_agents_on_free_slots():
    policy, population = async_policy("fedbuff", [100, 1, 1, 1, 1, 1, 1, 1], buffer=2, concurrency=3)
    step(policy, population, 0, 0.0, torch.zeros(3), [0, 1, 2])  # 1 and 2 arrive, 0 is still in flight
    context = RoundContext(1, 10, 0, population, torch.zeros(3), clock=1.0)
    chosen = policy.narrow_selection(context, np.array([3, 4, 6, 7]))
    expected = np.array([3, 4, 6, 7])[np.sort(component_rng(0, policy, ROUND_STREAM, 1, 0).choice(4, 2, replace=False))]
    assert chosen.tolist() == expected.tolist() and len(chosen) == 2


def test_fedasync_mixes_each_arrival_with_the_model_its_agent_started_from():
    """alpha 0.5, s(tau) = 1 / (1 + tau): x <- x + alpha s(tau) (x_tau + delta - x)."""
    policy, population = async_policy("fedasync", [4, 1, 1], alpha=0.5, a=1.0, concurrency=2)
    x0 = torch.tensor([1.0, -2.0, 0.5])
    _, _, released, context = step(policy, population, 0, 0.0, x0, [0, 1])
    assert [r.agent_id for r in released] == [1] and context.clock == 1
    torch.testing.assert_close(released[0].delta, 0.5 * torch.full((3,), 2.0))
    x1 = x0 + released[0].delta
    _, _, released, context = step(policy, population, 1, 1.0, x1, [2])
    x2 = x1 + released[0].delta
    _, _, released, context = step(policy, population, 2, 2.0, x2, [])
    assert [r.agent_id for r in released] == [0] and context.clock == 4
    delta0 = torch.full((3,), 1.0)  # agent 0's update, trained in round 0 from x0
    torch.testing.assert_close(released[0].delta, 0.5 / 3 * (x0 + delta0 - x2))
    assert policy.models == {}  # nothing in flight needs an old model any more


@pytest.mark.parametrize("name, params", [("fedbuff", {"buffer": 2, "concurrency": 3}),
                                          ("fedasync", {"concurrency": 2})])
def test_async_state_survives_a_checkpoint_round_trip(tmp_path, name, params):
    seconds = [5, 1, 3, 2, 4, 10]
    policy, population = async_policy(name, seconds, **params)
    x = torch.zeros(3)
    step(policy, population, 0, 0.0, x, [0, 1] if name == "fedasync" else [0, 1, 2])
    torch.save(policy.state_dict(), tmp_path / "state.pt")
    restored, _ = async_policy(name, seconds, **params)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for candidate in (policy, restored):
        _, _, released, context = step(candidate, population, 1, 3.0, x + 1, [3])
        candidate.outcome = ([r.agent_id for r in released], [r.delta for r in released], context.clock)
    assert policy.outcome[0] == restored.outcome[0] and policy.outcome[2] == restored.outcome[2]
    assert all(torch.equal(a, b) for a, b in zip(policy.outcome[1], restored.outcome[1]))


@settings(max_examples=100, deadline=None)
@given(tau=st.integers(0, 1000), a=st.floats(0, 5), b=st.floats(0, 50))
def test_staleness_weights_are_at_most_one_and_never_grow_with_staleness(tau, a, b):
    for kind in ("constant", "polynomial", "hinge"):
        now, later = staleness_weight(kind, np.array([tau, tau + 1]), a, b)
        assert 0 < later <= now <= 1
    assert staleness_weight("hinge", np.array([tau]), a, b)[0] == (1.0 if tau <= b else 1 / (a * (tau - b) + 1))
    assert staleness_weight("polynomial", np.array([tau]), a, b)[0] == pytest.approx((1 + tau) ** -a)


def test_fedbuff_on_instant_devices_is_synchronous_fedavg(tmp_path):
    """Every update arrives at once with staleness 0: a buffer of all of a round's agents is FedAvg."""
    sync = run(tmp_path, "sync", rounds=3)
    fedbuff = run(tmp_path, "fedbuff", rounds=3,
                  round_policy={"name": "fedbuff", "buffer": 4, "concurrency": 4, "staleness": "constant"})
    assert [row["completed"] for row in fedbuff.history] == [4, 4, 4]
    for key, value in sync.state_dict.items():
        assert torch.equal(value, fedbuff.state_dict[key]), key


def test_fedasync_with_alpha_one_and_one_agent_at_a_time_is_fedavg_of_one(tmp_path):
    one = {"name": "uniform", "count": 1}
    sync = run(tmp_path, "sync", rounds=3, sampler=one)
    fedasync = run(tmp_path, "fedasync", rounds=3, sampler=one,
                   round_policy={"name": "fedasync", "alpha": 1.0, "concurrency": 1, "staleness": "constant"})
    for key, value in sync.state_dict.items():
        torch.testing.assert_close(fedasync.state_dict[key], value, rtol=0, atol=1e-6)


def test_fedasync_refuses_a_strategy_that_is_not_mean_based(tmp_path):
    with pytest.raises(ConfigError, match="cannot run with aggregator 'krum'.*is not mean-based"):
        Experiment(tiny_config(round_policy="fedasync", aggregator="krum")).run(out_dir=tmp_path, progress=False)


def test_fedbuff_needs_room_for_a_buffer():
    with pytest.raises(ConfigError, match="concurrency = 2 is below buffer = 5"):
        Experiment(tiny_config(round_policy={"name": "fedbuff", "buffer": 5, "concurrency": 2}))


ASYNC = {"name": "fedbuff", "buffer": 2, "concurrency": 5}


@pytest.mark.parametrize("federation", [
    {"round_policy": {"name": "deadline", "deadline": 6.0, "late": "keep_partial"},
     "availability": {"name": "bernoulli", "p": 0.7}},
    {"round_policy": ASYNC, "availability": "diurnal", "sampler": {"name": "uniform", "fraction": 1.0}},
    {"round_policy": {"name": "fedasync", "concurrency": 3}, "sampler": {"name": "uniform", "fraction": 1.0}},
])
def test_stopped_and_resumed_runs_end_bit_identical(tmp_path, federation):
    config = validate_config(tiny_config(rounds=6, device_profile="drawn", **federation))
    straight = Experiment(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=3)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir, progress=False)
    columns = ("virtual_seconds", "available", "selected", "completed", "partial", "dropped", "deferred", "train_loss")
    assert [[row.get(c) for c in columns] for row in resumed.history] == \
        [[row.get(c) for c in columns] for row in straight.history]
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


KILLED = {
    "deadline": {"round_policy": {"name": "deadline", "deadline": 6.0, "late": "keep_partial"},
                 "availability": {"name": "bernoulli", "p": 0.7}},
    "fedbuff": {"round_policy": ASYNC, "sampler": {"name": "uniform", "fraction": 1.0}},
}


@pytest.mark.slow
@pytest.mark.parametrize("policy", list(KILLED))
def test_resume_after_kill_9_is_bit_identical(tmp_path, tiny_config, policy):
    """A real SIGKILL in the middle of a run with the clock, in-flight updates and availability."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from flcore.engine.checkpoint import load_sealed

    def flcore(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args, "--quiet"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    tiny_config["federation"].update(rounds=40, device_profile="drawn", **KILLED[policy])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    straight = flcore("run", str(config), "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    victim = flcore("run", str(config), "--out", str(tmp_path / "killed"))
    deadline, checkpoint = time.monotonic() + 120, None
    while time.monotonic() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed").glob("*/checkpoint.pt"))
        try:
            if found and int(load_sealed(found[0])["state"]["next_round"]) >= 5:
                checkpoint = found[0]
                break
        except Exception:  # replaced while read: read again
            pass
        time.sleep(0.01)
    assert checkpoint is not None and victim.poll() is None, "the run ended before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = flcore("run", "--resume", str(checkpoint.parent))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = torch.load(next((tmp_path / "straight").glob("*/model.pt")), weights_only=True)
    b = torch.load(checkpoint.parent / "model.pt", weights_only=True)
    assert all(torch.equal(a[name], b[name]) for name in a)
    from flcore.engine.rundir import read_csv

    clock = lambda folder: [row["virtual_seconds"] for row in read_csv(folder / "metrics.csv")]
    assert clock(next((tmp_path / "straight").glob("*/")).resolve()) == clock(checkpoint.parent)


class CountsRounds(AgentPlugin):
    """Per-agent state: a NumPy scalar (read from a column) and a tensor travel in results held in flight."""

    def state_fields(self):
        return (AgentField("rounds_trained", 0, "int64"), AgentField("last_loss", None))

    def on_update(self, agent, result):
        agent.state["rounds_trained"] = agent.state["rounds_trained"] + 1
        agent.state["last_loss"] = torch.tensor([result.metrics["loss"]])


class StatePlugins:
    @staticmethod
    @hookimpl
    def register_agent_plugins(register):
        register("counts_rounds", CountsRounds, "Test.")


def test_per_agent_state_held_in_flight_survives_a_resume(tmp_path):
    from flcore.engine.state_store import read_checkpoint

    config = validate_config(tiny_config(rounds=5, device_profile="drawn", agent_plugins=["counts_rounds"],
                                         round_policy=ASYNC, sampler={"name": "uniform", "fraction": 1.0}))

    def experiment():
        return Experiment(config, plugins=[("state", StatePlugins)])

    straight = experiment().run(out_dir=tmp_path / "a", progress=False)
    stopped = experiment().run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=2)
    resumed = experiment().run(resume_dir=stopped.run_dir, progress=False)
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    counts = read_checkpoint(straight.run_dir)["columns"]["rounds_trained"]
    assert counts.tolist() == read_checkpoint(resumed.run_dir)["columns"]["rounds_trained"].tolist()
    assert counts.sum() == sum(row["completed"] for row in straight.history)  # stored once an update arrives
