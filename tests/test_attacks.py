"""The built-in attacks: malicious agents chosen from a seeded stream, recorded, checkpointed; each
attack's formula against a NumPy reference; every backend; bad input with the field named."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from flcore import seeding
from flcore.agents import AgentPopulation
from flcore.aggregation import weighted_mean_delta
from flcore.cli import main
from flcore.config import validate_config
from flcore.engine.state_store import read_checkpoint
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import (
    SETUP_STREAM,
    AgentContext,
    AgentResult,
    AgentState,
    Instruction,
    RoundContext,
    component_rng,
)
from flcore.testing import build, check_agent_plugin, run_in_one_and_two_processes

ATTACKS = {
    "sign_flip": {"scale": 4.0},
    "gaussian_noise": {"std": 0.05},
    "scaling": {},
    "label_flip": {},
    "backdoor": {"target": 3, "boost": None},
    "alie": {},
    "ipm": {"epsilon": 0.5},
}


def armed(name, agents=10, sizes=None, seed=0, **params):
    """The attack, and a population whose malicious agents it chose at set-up."""
    attack = build("agent_plugin", name, **params)
    sizes = sizes or [5] * agents
    starts = np.cumsum([0] + sizes)
    shards = [np.arange(starts[a], starts[a + 1]) for a in range(agents)]
    population = AgentPopulation(Partition.from_shards(shards), attack.state_fields())
    attack.setup(population, component_rng(seed, attack, SETUP_STREAM))
    return attack, population


def agent_context(population, agent_id, instruction=None):
    return AgentContext(agent_id, 0, instruction or Instruction(agent_id, 1), [], [], 0.1,
                        int(population.num_samples[agent_id]), AgentState(population, agent_id))


def round_of(population, selected, data=None):
    return RoundContext(0, 1, 0, population, torch.zeros(3), selected=np.asarray(selected), data=data)


def malicious(attack, population):
    return set(attack.malicious_ids(population).tolist())


# ------------------------------------------------------------------------------ malicious agents
def test_malicious_agents_are_a_draw_from_the_attack_stream_or_exactly_the_ids():
    attack, population = armed("sign_flip", agents=20, share=0.2)
    stream = np.random.default_rng(np.random.SeedSequence([0, seeding.PLUGINS, zlib.crc32(b"sign_flip"), SETUP_STREAM]))
    assert malicious(attack, population) == set(stream.choice(20, size=4, replace=False).tolist())
    assert len(malicious(*armed("sign_flip", agents=20))) == 4  # the default share, 0.2
    assert len(malicious(*armed("sign_flip", agents=20, count=7))) == 7
    assert malicious(*armed("sign_flip", agents=20, ids=[3, 11])) == {3, 11}
    assert malicious(*armed("sign_flip", agents=20, share=0.2, seed=1)) != malicious(attack, population)


def test_the_run_folder_records_the_malicious_agents_and_the_checkpoint_holds_them(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=2, agent_plugins=[{"name": "alie", "share": 0.25}])
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    record = json.loads((result.run_dir / "records.json").read_text())["agent_plugin[0]:alie"]
    column = read_checkpoint(result.run_dir)["columns"]["alie/malicious"]
    assert record["malicious"] == np.flatnonzero(column).tolist() and record["count"] == 2
    assert record["colluding"] is True and record["params"]["share"] == 0.25
    records = json.loads((result.run_dir / "records.json").read_text())
    assert set(records) == {"agent_plugin[0]:alie"}  # components without a record write nothing


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_is_deterministic_resumes_bit_identically_and_vectorizes(name, tmp_path):
    check_agent_plugin(name, tmp_path, **ATTACKS[name])


# ------------------------------------------------------------------------------ update attacks
def test_sign_flip_sends_minus_s_times_the_update_of_malicious_agents_only():
    attack, population = armed("sign_flip", scale=3.0)
    delta = np.random.default_rng(0).normal(size=12)
    for agent in range(10):
        result = AgentResult(agent, torch.tensor(delta), 5)
        attack.on_update(agent_context(population, agent), result)
        expected = -3.0 * delta if agent in malicious(attack, population) else delta
        np.testing.assert_array_equal(result.delta.numpy(), expected)


def test_gaussian_noise_replaces_the_update_with_seeded_noise_of_the_given_std():
    attack, population = armed("gaussian_noise", std=0.3, ids=[2])
    instructions = [Instruction(a, 1) for a in (1, 2)]
    context = round_of(population, [1, 2])
    attack.configure_round(context, instructions)
    assert "gaussian_noise/seed" not in instructions[0].extra
    seed = instructions[1].extra["gaussian_noise/seed"]
    assert seed == int(context.rng(attack, 2).integers(2**63))  # the attack's own round stream
    result = AgentResult(2, torch.ones(20_000, dtype=torch.float64), 5)
    attack.on_update(agent_context(population, 2, instructions[1]), result)
    reference = torch.randn(20_000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.3
    torch.testing.assert_close(result.delta, reference, rtol=0, atol=0)
    assert abs(float(result.delta.std()) - 0.3) < 0.01


def test_scaling_by_default_is_model_replacement_under_sample_weighted_fedavg():
    """Bagdasaryan et al.'s gamma: with honest updates near zero, weighted FedAvg of the boosted
    update lands exactly on the attacker's model."""
    sizes = [4, 7, 9, 5, 11]
    attack, population = armed("scaling", agents=5, sizes=sizes, ids=[1])
    selected = [0, 1, 3]
    instructions = [Instruction(a, 1) for a in selected]
    attack.configure_round(round_of(population, selected), instructions)
    gamma = instructions[1].extra["scaling/factor"]
    assert gamma == pytest.approx((4 + 7 + 5) / 7)
    target = torch.tensor(np.random.default_rng(1).normal(size=6))
    updates = []
    for agent, instruction in zip(selected, instructions):
        result = AgentResult(agent, target.clone() if agent == 1 else torch.zeros(6, dtype=torch.float64), sizes[agent])
        attack.on_update(agent_context(population, agent, instruction), result)
        updates.append(result)
    torch.testing.assert_close(weighted_mean_delta(updates), target)
    instructions = [Instruction(1, 1)]
    armed_factor, population = armed("scaling", agents=5, sizes=sizes, ids=[1], factor=2.5)
    armed_factor.configure_round(round_of(population, [1]), instructions)
    assert instructions[0].extra["scaling/factor"] == 2.5


def test_label_flip_reverses_or_shifts_the_labels_of_malicious_batches():
    from flcore_plugins.datasets.digits import Digits, DigitsParams

    data = Digits(DigitsParams())
    y = torch.arange(10).repeat(3)
    x = torch.zeros(30, 1, 8, 8)
    for mapping, reference in (("reverse", 9 - y.numpy()), ("next", (y.numpy() + 1) % 10)):
        attack, population = armed("label_flip", ids=[4], mapping=mapping)
        instructions = [Instruction(4, 1), Instruction(5, 1)]
        attack.configure_round(round_of(population, [4, 5], data), instructions)
        _, flipped = attack.transform_batch(agent_context(population, 4, instructions[0]), x, y)
        np.testing.assert_array_equal(flipped.numpy(), reference)
        _, honest = attack.transform_batch(agent_context(population, 5, instructions[1]), x, y)
        assert torch.equal(honest, y)


# ------------------------------------------------------------------------------ the backdoor
def test_the_backdoor_stamps_the_trigger_on_evenly_spread_positions_and_relabels_them():
    from flcore_plugins.datasets.digits import Digits, DigitsParams

    data = Digits(DigitsParams())
    attack, population = armed("backdoor", ids=[0], target=7, size=3, poison_fraction=0.4)
    instruction = Instruction(0, 1)
    attack.configure_round(round_of(population, [0], data), [instruction])
    x = data.transform(data.x_train[:10])
    y = data.y_train[:10]
    stamped, labels = attack.transform_batch(agent_context(population, 0, instruction), x, y)
    j = np.arange(10)
    poisoned = np.floor((j + 1) * 0.4) > np.floor(j * 0.4)  # positions 2, 4, 7, 9
    assert poisoned.sum() == 4  # 0.4 of the batch
    high = data.transform(torch.full((1, 1, 8, 8), float(data.x_train.max())))[0, 0, 0, 0]
    for i in range(10):
        if poisoned[i]:
            assert labels[i] == 7
            torch.testing.assert_close(stamped[i, :, -3:, -3:], torch.full((1, 3, 3), float(high)))
            torch.testing.assert_close(stamped[i, :, :-3, :], x[i, :, :-3, :])
        else:
            assert labels[i] == y[i] and torch.equal(stamped[i], x[i])


def test_the_attack_success_rate_is_the_target_accuracy_on_triggered_inputs_of_other_classes():
    from flcore_plugins.datasets.digits import Digits, DigitsParams

    data = Digits(DigitsParams())
    attack, population = armed("backdoor", target=2, size=2)
    seen = {}

    def evaluate(x, y, vector=None, buffers=None):
        seen.update(x=x, y=y)
        return {"loss": 0.0, "acc": 0.625}

    context = round_of(population, [], data)
    attack.on_evaluate(context, evaluate)
    assert context.metrics["backdoor/attack_success"] == 0.625
    others = (data.y_test != 2).numpy()
    assert len(seen["y"]) == others.sum() and bool((seen["y"] == 2).all())
    assert bool((seen["x"][:, :, -2:, -2:] == data.x_train.max()).all())
    torch.testing.assert_close(seen["x"][:, :, :-2, :], data.x_test[others][:, :, :-2, :])


def test_a_backdoor_learns_its_trigger_under_fedavg_and_logs_success_every_round(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=4, sampler="all", agent_plugins=[{"name": "backdoor", "target": 0,
                                                                             "share": 0.25}])
    history = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path).history
    success = [row["backdoor/attack_success"] for row in history]
    assert len(success) == 4 and success[-1] > 0.5 and history[-1]["test_acc"] > 0.5


# ------------------------------------------------------------------------------ colluding attacks
def _round_results(population, deltas):
    return [AgentResult(a, torch.tensor(d), 5) for a, d in enumerate(deltas)]


@pytest.mark.parametrize("n,f", [(10, 2), (20, 4), (50, 24), (7, 3), (3, 1)])
def test_alie_z_is_the_papers_z_max(n, f):
    from flcore_plugins.attacks.colluding import alie_z
    from scipy.stats import norm

    s = max(int(np.floor(n / 2 + 1)) - f, 1)
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), rel=1e-12)


def test_alie_sends_the_honest_mean_minus_z_std_from_every_malicious_agent():
    from scipy.stats import norm

    attack, population = armed("alie", agents=10, ids=[1, 6, 8])
    deltas = np.random.default_rng(3).normal(size=(10, 9))
    results = _round_results(population, deltas)
    results[4] = AgentResult.failed(4, "test")  # a failed agent is neither honest nor malicious
    context = round_of(population, range(10))
    attack.on_results(context, results)
    honest = deltas[[0, 2, 3, 5, 7, 9]]
    n, f = 9, 3
    z = norm.ppf((n - (n // 2 + 1 - f)) / n)
    crafted = honest.mean(axis=0) - z * honest.std(axis=0, ddof=1)
    for agent in (1, 6, 8):
        np.testing.assert_allclose(results[agent].delta.numpy(), crafted, rtol=1e-12)
    for agent in (0, 2, 3, 5, 7, 9):
        np.testing.assert_array_equal(results[agent].delta.numpy(), deltas[agent])
    assert context.metrics["alie/z"] == pytest.approx(z)


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    attack, population = armed("ipm", agents=6, ids=[0, 5], epsilon=0.7)
    deltas = np.random.default_rng(4).normal(size=(6, 5))
    results = _round_results(population, deltas)
    attack.on_results(round_of(population, range(6)), results)
    crafted = -0.7 * deltas[1:5].mean(axis=0)
    for agent in (0, 5):
        np.testing.assert_allclose(results[agent].delta.numpy(), crafted, rtol=1e-12)
    assert float(results[0].delta @ torch.tensor(deltas[1:5].mean(axis=0))) < 0  # the inner product turns negative


def test_colluding_attacks_are_declared_and_non_colluding_ones_never_hold_the_round():
    from flcore.protocol import overrides

    for name in ATTACKS:
        attack = build("agent_plugin", name, **ATTACKS[name])
        assert attack.colluding == (name in ("alie", "ipm")), name
        assert overrides(attack, "on_results") == attack.colluding, name  # only colluding ones stop streaming
        assert attack.vectorizable, name


# ------------------------------------------------------------------------------ what defenses let through
def test_attacks_log_the_malicious_share_of_what_the_strategy_kept():
    attack, population = armed("sign_flip", agents=6, ids=[1, 4])
    accepted = [AgentResult(a, torch.zeros(2), 5) for a in range(6)]
    context = round_of(population, range(6))
    context.kept = {0: 0.1, 1: 0.3, 3: 0.2, 4: 0.4}
    attack.on_round_end(context, accepted)
    assert context.metrics["sign_flip/malicious_updates"] == 2
    assert context.metrics["sign_flip/malicious_kept"] == pytest.approx(0.7)
    unknown = round_of(population, range(6))
    attack.on_round_end(unknown, accepted)
    assert "sign_flip/malicious_kept" not in unknown.metrics  # a median cannot tell


def test_krum_in_a_run_reports_whether_it_chose_a_malicious_update(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=3, sampler="all", aggregator={"name": "krum", "byzantine": 2},
                                     agent_plugins=[{"name": "ipm", "count": 2, "epsilon": 0.1}])
    history = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path).history
    assert all(row["ipm/malicious_kept"] in (0.0, 1.0) for row in history)
    assert all(row["ipm/malicious_updates"] == 2 for row in history)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("attack,message", [
    ("{name: sign_flip, count: 30}", r"federation.agent_plugins\[0\] 'sign_flip' cannot be used here: 'count' = 30 "
                                     r"malicious agents, but the run has only federation.agents = 8"),
    ("{name: sign_flip, ids: [2, 9, 12]}", r"'ids' names agents \[9, 12\] outside 0..7"),
    ("{name: backdoor, target: 12}", r"federation.agent_plugins\[0\] 'backdoor' cannot be used here: 'target' = 12 "
                                     r"is not a class: the dataset has 10 classes"),
    ("{name: backdoor, size: 9}", r"'size' = 9 is larger than the 8x8 images"),
    ("{name: alie, share: 0.2, count: 2}", r"give one of share, count and ids, not share and count"),
    ("{name: sign_flip, share: 1.5}", r"'federation.agent_plugins\[0\].share' = 1.5"),
])
def test_bad_attack_parameters_exit_2_naming_the_field(tmp_path, attack, message):
    import yaml

    from flcore.testing import tiny_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "runs"),
                                       "--set", f"federation.agent_plugins=[{attack}]"])
    assert result.exit_code == 2, result.output
    assert __import__("re").search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "runs").glob("*")), "no half-written run folder is left"


# ------------------------------------------------------------------------------ other backends, kill -9
@pytest.mark.slow
@pytest.mark.parametrize("attack", [{"name": "backdoor", "target": 1}, {"name": "alie"}])
def test_attacks_give_the_same_model_over_two_processes(tmp_path, tiny_config, attack):
    """The distributed backend: malicious agents chosen alike in every process, triggers and
    colluding rewrites applied to the gathered results: bit-identical to one process."""
    tiny_config["federation"].update(agent_plugins=[attack], sampler={"name": "uniform", "count": 5})
    run_in_one_and_two_processes(tmp_path, tiny_config)


@pytest.mark.slow
def test_an_attacked_robust_run_killed_with_sigkill_resumes_bit_identically(tmp_path, tiny_config):
    """Malicious agents (per-agent field), per-round attack seeds and centered clipping's center
    (server state) all come back from the checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from flcore.engine.checkpoint import load_sealed

    def _flcore(*args):
        return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args, "--quiet"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def next_round(checkpoint):
        return int(load_sealed(checkpoint)["state"]["next_round"])

    tiny_config["federation"].update(rounds=20, agent_plugins=[{"name": "gaussian_noise", "std": 0.5}],
                                     aggregator={"name": "centered_clipping", "tau": 0.5})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    straight = _flcore("run", str(config), "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    victim = _flcore("run", str(config), "--out", str(tmp_path / "killed"))
    checkpoint, deadline = None, time.monotonic() + 120
    while checkpoint is None and time.monotonic() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed").glob("*/checkpoint.pt"))
        try:
            checkpoint = found[0] if found and next_round(found[0]) >= 5 else None
        except Exception:  # replaced while read
            pass
        time.sleep(0.01)
    assert checkpoint is not None and victim.poll() is None, "the run ended before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    resumed = _flcore("run", "--resume", str(checkpoint.parent))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = torch.load(next((tmp_path / "straight").glob("*/model.pt")), weights_only=True)
    b = torch.load(checkpoint.parent / "model.pt", weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (checkpoint.parent / "records.json").read_text() == \
        next((tmp_path / "straight").glob("*/records.json")).read_text()
