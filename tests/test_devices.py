"""Device profiles and the time model: an agent's round is download + compute + upload, checked by
hand and against the steps and samples the trainer really takes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flcore import hookimpl
from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentPopulation
from flcore.config import validate_config
from flcore.devices import DeviceProfile, Work, model_bytes, planned_work, steps_within, upload_size
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import SETUP_STREAM, AgentResult, component_rng
from flcore.server_plugin import ServerPlugin
from flcore.testing import build, check_device_profile, tiny_config


def set_up(name: str, agents: int = 6, seed: int = 0, **params):
    profile = build("device_profile", name, **params)
    population = AgentPopulation(Partition.from_shards([np.arange(1 + a) for a in range(agents)]), profile.state_fields())
    profile.setup(population, component_rng(seed, profile, SETUP_STREAM))
    return profile, population


def constant(value: float) -> dict:
    return {"distribution": "constant", "value": value}


@pytest.mark.parametrize("name", ["instant", "drawn"])
def test_built_in_profiles_pass_the_conformance_check(name):
    check_device_profile(name)


def test_the_trace_profile_passes_the_conformance_check(tmp_path):
    trace = tmp_path / "devices.csv"
    trace.write_text("compute_speed,download_bandwidth,upload_bandwidth\n10,1e5,2e4\n40,3e5,1e5\n25.5,2e6,7e5\n")
    check_device_profile("trace", path=str(trace))


def test_a_round_takes_download_plus_compute_plus_upload():
    profile, population = set_up("drawn", compute_speed=constant(50.0), download_bandwidth=constant(1000.0),
                                 upload_bandwidth=constant(250.0))
    seconds = profile.seconds(population, np.array([0, 3]), Work(np.array([100.0, 25.0]), 2000.0, np.array([500.0, 0])))
    np.testing.assert_allclose(seconds, [2000 / 1000 + 100 / 50 + 500 / 250, 2000 / 1000 + 25 / 50 + 0])


def test_instant_takes_no_time_and_everything_fits():
    profile, population = set_up("instant")
    assert profile.seconds(population, np.arange(3), Work(np.full(3, 1e9), 1e9, 1e9)).tolist() == [0, 0, 0]
    assert profile.samples_within(population, np.arange(2), 0.0, 1e9, 1e9, most=77).tolist() == [77, 77]


def test_drawn_speeds_come_from_the_named_distributions_on_the_setup_stream():
    profile, population = set_up("drawn", agents=200, seed=5, compute_speed={"distribution": "lognormal", "median": 80,
                                                                             "sigma": 0.5},
                                 download_bandwidth={"distribution": "uniform", "low": 1e5, "high": 3e5},
                                 upload_bandwidth=constant(4e4))
    rng = component_rng(5, profile, SETUP_STREAM)
    np.testing.assert_array_equal(population.column("compute_speed"), rng.lognormal(np.log(80), 0.5, 200))
    np.testing.assert_array_equal(population.column("download_bandwidth"), rng.uniform(1e5, 3e5, 200))
    assert set(population.column("upload_bandwidth").tolist()) == {4e4}


def test_bad_distributions_are_rejected_naming_the_field():
    with pytest.raises(ConfigError, match="compute_speed.lognormal.median"):
        Experiment(tiny_config(device_profile={"name": "drawn", "compute_speed": {"distribution": "lognormal",
                                                                                   "median": -3}}))


@settings(max_examples=50, deadline=None)
@given(speed=st.floats(0.1, 1e4), down=st.floats(1.0, 1e7), up=st.floats(1.0, 1e7), budget=st.floats(0, 1e3),
       download=st.floats(0, 1e6), upload=st.floats(0, 1e6))
def test_samples_within_is_the_most_that_fits(speed, down, up, budget, download, upload):
    profile, population = set_up("drawn", agents=1, compute_speed=constant(speed), download_bandwidth=constant(down),
                                 upload_bandwidth=constant(up))
    agents = np.array([0])
    fit = int(profile.samples_within(population, agents, budget, download, upload, most=10**7)[0])
    seconds = lambda s: float(profile.seconds(population, agents, Work(np.array([float(s)]), download, upload))[0])
    assert 0 <= fit <= 10**7
    assert fit == 0 or seconds(fit) <= budget
    assert fit == 10**7 or seconds(fit + 1) > budget
    generic = DeviceProfile.samples_within(profile, population, agents, budget, download, upload, most=10**7)
    assert generic.tolist() == [fit]  # the base class's bisection agrees with the closed form


def trainer_steps(n: int, epochs: int, max_steps: int | None, batch: int | None) -> tuple[int, int]:
    """The engine's local loop, counted in plain Python (the reference)."""
    batch = batch or max(n, 1)
    steps = samples = 0
    for _ in range(epochs):
        for start in range(0, n, batch):
            steps += 1
            samples += min(batch, n - start)
            if max_steps is not None and steps >= max_steps:
                return steps, samples
    return steps, samples


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200), epochs=st.integers(1, 6), max_steps=st.one_of(st.none(), st.integers(1, 80)),
       batch=st.one_of(st.none(), st.integers(1, 64)))
def test_planned_work_counts_what_the_local_loop_does(n, epochs, max_steps, batch):
    steps, samples = planned_work(np.array([n]), epochs, None if max_steps is None else np.array([max_steps]), batch)
    assert (int(steps[0]), int(samples[0])) == trainer_steps(n, epochs, max_steps, batch)
    if n:
        for s in range(0, int(steps[0]) + 1):  # steps_within inverts the samples of every step count
            used = trainer_steps(n, epochs, s, batch)[1] if s else 0
            assert int(steps_within(np.array([n]), np.array([used]), batch)[0]) == s


CAUGHT: list[tuple[int, int, int, int, int | None]] = []


class RecordWork(ServerPlugin):
    def on_round_end(self, context, accepted):
        for result in accepted:
            samples = sum(h["samples"] for h in result.history)
            instruction = next(i for i in context.instructions if i.agent_id == result.agent_id)
            CAUGHT.append((result.num_samples, instruction.epochs, result.steps, samples, instruction.max_steps))


class HalfUpload(AgentPlugin):
    """A stand-in for compression: says the update takes half its dense bytes on the wire."""

    def on_update(self, agent, result):
        result.upload_bytes = result.delta.numel() * 2


class Plugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("record_work", RecordWork, "Test.")

    @staticmethod
    @hookimpl
    def register_agent_plugins(register):
        register("half_upload", HalfUpload, "Test.")


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_the_trainer_takes_the_planned_steps_and_samples(tmp_path, backend):
    CAUGHT.clear()
    config = tiny_config(server_plugins=["record_work"], rounds=2, backend=backend)
    config["training"].update(epochs=3, max_steps=11, batch_size=16)
    Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path, progress=False)
    assert len(CAUGHT) == 8
    for n, epochs, steps, samples, max_steps in CAUGHT:
        expected = planned_work(np.array([n]), epochs, max_steps, 16)
        assert (steps, samples) == (int(expected[0][0]), int(expected[1][0]))


def test_the_virtual_clock_is_the_slowest_agent_by_hand_with_compressed_uploads(tmp_path):
    """Known speeds, sizes and bytes: each synchronous round lasts max_k(down + samples_k/speed + up)."""
    CAUGHT.clear()
    config = tiny_config(server_plugins=["record_work"], agent_plugins=["half_upload"], rounds=3,
                         device_profile={"name": "drawn", "compute_speed": constant(40.0),
                                         "download_bandwidth": constant(5000.0), "upload_bandwidth": constant(1000.0)})
    result = Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path, progress=False)
    parameters = 64 * 32 + 32 + 32 * 10 + 10  # the tiny MLP: 64 inputs, 32 hidden, 10 classes
    clock, previous = [], 0.0
    for r in range(3):
        shards = [c[0] for c in CAUGHT[4 * r: 4 * r + 4]]  # one epoch, no step budget: each sample once
        previous += max(4 * parameters / 5000.0 + n / 40.0 + 2 * parameters / 1000.0 for n in shards)
        clock.append(previous)
    np.testing.assert_allclose([row["virtual_seconds"] for row in result.history], clock, rtol=1e-12)


def test_upload_size_prefers_what_a_compression_plugin_set():
    import torch

    dense = AgentResult(0, torch.zeros(10), 3)
    assert upload_size(dense, 999) == 40
    assert upload_size(AgentResult(0, None, 3), 999) == 999
    assert upload_size(AgentResult(0, torch.zeros(10), 3, upload_bytes=7), 999) == 7
    assert model_bytes(torch.zeros(5), {"running_mean": torch.zeros(3), "num_batches_tracked": torch.zeros((), dtype=torch.long)}) == 32


@pytest.mark.parametrize("text, where", [
    ("compute_speed,download_bandwidth,upload_bandwidth\n10,1e5,1e5\n-3,1e5,1e5\n",
     "line 3, column 'compute_speed' = -3: expected training samples per second, a finite number above 0"),
    ("agent,compute_speed,download_bandwidth,upload_bandwidth\n0,1,1,1\n7,1,1,1\n",
     "line 3, column 'agent' = 7: expected an agent id of this run"),
    ("agent,compute_speed,download_bandwidth,upload_bandwidth\n0,1,1,1\n1,1,0,1\n",
     "line 3, column 'download_bandwidth' = 0: expected bytes per second"),
    ("agent,compute_speed,download_bandwidth,upload_bandwidth\n0,1,1,1\n0,2,2,2\n",
     "line 3, column 'agent' = 0: the agent already has a line (2)"),
])
def test_bad_device_traces_name_the_file_line_and_column(tmp_path, text, where):
    trace = tmp_path / "devices.csv"
    trace.write_text(text)
    with pytest.raises(ConfigError) as error:
        set_up("trace", agents=3, path=str(trace))
    assert f"trace '{trace}', {where}" in str(error.value)


def test_device_traces_assign_lines_by_agent_or_in_turn(tmp_path):
    by_agent = tmp_path / "a.csv"
    by_agent.write_text("agent,compute_speed,download_bandwidth,upload_bandwidth\n1,2,20,200\n0,1,10,100\n")
    profile, population = set_up("trace", agents=2, path=str(by_agent))
    assert population.column("compute_speed").tolist() == [1, 2]
    assert population.column("upload_bandwidth").tolist() == [100, 200]
    in_turn = tmp_path / "b.csv"
    in_turn.write_text("compute_speed,download_bandwidth,upload_bandwidth,client\n1,10,100,a\n2,20,200,b\n")
    profile, population = set_up("trace", agents=5, path=str(in_turn))
    assert population.column("download_bandwidth").tolist() == [10, 20, 10, 20, 10]
    missing = tmp_path / "c.csv"
    missing.write_text("agent,compute_speed,download_bandwidth,upload_bandwidth\n0,1,10,100\n")
    with pytest.raises(ConfigError, match="no line for agent 1"):
        set_up("trace", agents=2, path=str(missing))
