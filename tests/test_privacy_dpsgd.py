"""Sample-level DP-SGD (``dp_sgd``): the clipped, noised gradient against a plain PyTorch loop over
single samples, Poisson batches statistically, the per-agent accountant against dp-accounting,
resume, target epsilon, the budget stop, and bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from flcore.agents import AgentPopulation
from flcore.cli import main
from flcore.config import validate_config
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import RunPlan
from flcore.testing import build, check_agent_plugin, run_in_one_and_two_processes, tiny_config

dp_accounting = pytest.importorskip("dp_accounting")


def library_epsilon(rate: float, z: float, steps: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(z)), steps)
    return accountant.get_epsilon(delta)


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 5)).double()


def gradient(plugin, model, x, y, n):
    """The plugin's gradient for the batch ``(x, y)`` of an agent holding ``n`` samples."""
    params = [p for p in model.parameters() if p.requires_grad]
    agent = SimpleNamespace(params=params, num_samples=n)
    list(plugin.epoch_batches(agent, n, 8, torch.Generator().manual_seed(0)))  # sets the expected batch size
    for p in params:
        p.grad = None
    losses, logits = plugin.compute_gradients(agent, model, x, y, lambda out, t: torch.nn.functional.cross_entropy(
        out, t, reduction="none"))
    return torch.cat([p.grad.reshape(-1) for p in params]), losses, logits


def reference_gradient(model, x, y, clip, expected):
    """Abadi et al.'s step without noise, one sample at a time with plain autograd."""
    total = None
    for i in range(len(x)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        g = g * min(1.0, clip / float(g.norm()))
        total = g if total is None else total + g
    return total / expected


def test_the_clipped_gradient_is_a_loop_over_single_samples():
    """Clip norm 4.5 clips some of the 11 samples and not others; the sum over the expected batch
    (q n = 8 for batches of 8 from 40 samples), not the actual 11, is the reference's to 1e-6."""
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(11, 12, generator=gen, dtype=torch.float64) * 2, torch.randint(0, 5, (11,), generator=gen)
    plugin = build("agent_plugin", "dp_sgd", clip_norm=4.5, noise_multiplier=0.0)
    ours, losses, logits = gradient(plugin, model, x, y, n=40)
    expected = reference_gradient(model, x, y, 4.5, expected=8)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)
    norms = []
    for i in range(11):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norms.append(float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()))
    assert min(norms) < 4.5 < max(norms), "the batch should mix clipped and unclipped samples"
    torch.testing.assert_close(logits, model(x).detach())
    torch.testing.assert_close(losses, torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach())


def test_the_noise_has_standard_deviation_z_c_over_the_expected_batch():
    """The noised minus the clean gradient over 2,245 coordinates: its standard deviation is within
    4 standard errors (about 6 %) of z C / (q n); noise on each sample, or dividing by the actual
    batch, would be off by far more."""
    model = small_model()
    x, y = torch.randn(6, 12, dtype=torch.float64), torch.arange(6) % 5
    z, clip, n = 1.7, 0.5, 40
    clean, _, _ = gradient(build("agent_plugin", "dp_sgd", clip_norm=clip, noise_multiplier=0.0), model, x, y, n)
    torch.manual_seed(3)
    noisy, _, _ = gradient(build("agent_plugin", "dp_sgd", clip_norm=clip, noise_multiplier=z), model, x, y, n)
    noise = (noisy - clean).numpy()
    sigma = z * clip / 8
    assert abs(noise.std() - sigma) < 4 * sigma / math.sqrt(2 * noise.size)
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)


def test_an_empty_poisson_batch_is_a_step_of_noise_alone():
    model = small_model()
    torch.manual_seed(5)
    ours, losses, logits = gradient(build("agent_plugin", "dp_sgd", clip_norm=2.0, noise_multiplier=1.0), model,
                                    torch.zeros(0, 12, dtype=torch.float64), torch.zeros(0, dtype=torch.long), 40)
    assert len(losses) == 0 and logits.shape == (0, 5)
    assert abs(ours.std().item() - 2.0 / 8) < 4 * (2.0 / 8) / math.sqrt(2 * ours.numel())


def test_batches_are_poisson_samples_of_the_shard():
    """600 epochs of a 50-sample shard in batches of 10 (q = 0.2): 5 batches an epoch, each sample's
    inclusion frequency within 5 standard errors of q, and batch sizes with binomial variance."""
    plugin = build("agent_plugin", "dp_sgd")
    gen = torch.Generator().manual_seed(0)
    agent = SimpleNamespace(params=[], num_samples=50)
    counts, sizes = np.zeros(50), []
    for _ in range(600):
        batches = list(plugin.epoch_batches(agent, 50, 10, gen))
        assert len(batches) == 5
        for batch in batches:
            counts[batch.numpy()] += 1
            sizes.append(len(batch))
    draws = 600 * 5
    assert np.abs(counts / draws - 0.2).max() < 5 * math.sqrt(0.2 * 0.8 / draws)
    assert abs(np.var(sizes, ddof=1) / (50 * 0.2 * 0.8) - 1) < 0.15


# ------------------------------------------------------------------------------ accounting
def planned(plugin, sizes, batch_size=8, epochs=1, rounds=4):
    """``plugin`` checked and set up for agents holding ``sizes`` samples."""
    training = SimpleNamespace(batch_size=batch_size, epochs=epochs, max_steps=None)
    plugin.check_run(RunPlan(len(sizes), rounds, None, None, training=training))
    population = AgentPopulation(Partition.from_shards([np.arange(s) for s in sizes]), plugin.state_fields())
    plugin.setup(population, np.random.default_rng(0))
    return population


def test_each_agents_epsilon_is_the_librarys_and_the_worst_is_reported():
    """Agents of 16, 40 and 100 samples at batch size 8 (q = 1/2, 1/5, 2/25) with 3, 30 and 200
    steps: the plugin's figure is the largest of the library's three answers."""
    z, delta = 1.1, 1e-5
    plugin = build("agent_plugin", "dp_sgd", noise_multiplier=z, delta=delta)
    population = planned(plugin, [16, 40, 100, 100])
    population.update("dp_sgd_steps", np.arange(4), np.array([3, 30, 200, 50]))
    each = [library_epsilon(8 / n, z, s, delta) for n, s in ((16, 3), (40, 30), (100, 200))]
    assert plugin.epsilon() == pytest.approx(max(each), rel=1e-12)
    population.update("dp_sgd_steps", np.arange(4), np.array([40, 0, 0, 0]))
    assert plugin.epsilon() == pytest.approx(library_epsilon(0.5, z, 40, delta), rel=1e-12)


def test_a_run_counts_every_step_each_agent_ran(tmp_path):
    """Three rounds of the tiny experiment: every selected agent takes round(n / 32) Poisson steps a
    round, so the reported epsilon is the library's worst over agents from sampling.csv's counts."""
    z, delta = 1.0, 1e-4
    config = validate_config(tiny_config(agent_plugins=[{"name": "dp_sgd", "noise_multiplier": z, "delta": delta}]))
    result = Experiment(config).run(out_dir=tmp_path, progress=False)
    rows = [line.split(",") for line in (result.run_dir / "sampling.csv").read_text().split()[1:]]
    each = [library_epsilon(32 / int(n), z, int(t) * max(1, round(int(n) / 32)), delta)
            for _, t, n in rows if int(t)]
    assert result.history[-1]["dp_sgd/epsilon"] == pytest.approx(max(each), rel=1e-12)
    assert result.history[0]["dp_sgd/epsilon"] < result.history[-1]["dp_sgd/epsilon"]
    summary = json.loads((result.run_dir / "summary.json").read_text())["components"]["agent_plugin[0]:dp_sgd"]
    assert summary["epsilon"] == result.history[-1]["dp_sgd/epsilon"]
    assert f"Sample-level ({summary['epsilon']:.4g}, 0.0001)" in summary["guarantee"]
    assert "Poisson sampling (exact)" in summary["guarantee"]


def test_dp_sgd_honours_the_agent_plugin_interface_and_resumes_exactly(tmp_path):
    """Deterministic, and a run stopped after round 1 and resumed ends bit-identical (the noise and
    the batches are seeded per agent and round; each agent's step count is checkpointed)."""
    check_agent_plugin("dp_sgd", tmp_path / "check", noise_multiplier=0.8, delta=1e-4)
    config = validate_config(tiny_config(rounds=4, agent_plugins=[{"name": "dp_sgd", "noise_multiplier": 0.8,
                                                                    "delta": 1e-4}]))
    straight = Experiment(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=2)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    assert [r["dp_sgd/epsilon"] for r in resumed.history] == [r["dp_sgd/epsilon"] for r in straight.history]


# ------------------------------------------------------------------------------ target and budget
def test_target_epsilon_calibrates_the_smallest_noise_that_reaches_it():
    """Worst case planned: every agent in every one of 4 rounds. The calibrated z meets the target
    at the library's own answer, and 0.99 z misses it."""
    target, delta = 2.0, 1e-5
    plugin = build("agent_plugin", "dp_sgd", target_epsilon=target, delta=delta)
    planned(plugin, [16, 40, 100], rounds=4)
    z = plugin.noise_multiplier
    worst = max(library_epsilon(8 / n, z, 4 * round(n / 8), delta) for n in (16, 40, 100))
    looser = max(library_epsilon(8 / n, 0.99 * z, 4 * round(n / 8), delta) for n in (16, 40, 100))
    assert worst <= target < looser
    assert plugin.calibrated and "calibrated before round 1" in plugin.guarantee()


def test_dp_fedavg_target_epsilon_calibrates_against_the_library():
    target, delta, rounds, q = 3.0, 1e-3, 30, 0.25
    plugin = build("server_plugin", "dp_fedavg", target_epsilon=target, delta=delta)
    plugin.check_run(RunPlan(40, rounds, 10, None, sampler=build("sampler", "uniform", count=10)))
    z = plugin.noise_multiplier
    assert library_epsilon(q, z, rounds, delta) <= target < library_epsilon(q, 0.99 * z, rounds, delta)
    assert plugin.run_summary()["noise_multiplier"] == z and plugin.run_summary()["calibrated_noise_multiplier"]


@pytest.mark.parametrize("plugin", ["dp_sgd", "dp_fedavg"])
def test_a_calibrated_noise_multiplier_survives_a_resume_that_extends_the_run(tmp_path, plugin):
    """Calibrated for 2 rounds, resumed with federation.rounds = 3: the third round noises and
    accounts with the z of the first two (recalibrating for 3 would change every epsilon)."""
    params = {"target_epsilon": 4.0, "delta": 1e-4}
    federation = {"rounds": 2}
    if plugin == "dp_sgd":
        federation["agent_plugins"] = [{"name": "dp_sgd", **params}]
    else:
        federation["aggregator"] = {"name": "fedavg", "weighted": False}
        federation["server_plugins"] = [{"name": "dp_fedavg", **params}]
    first = Experiment(validate_config(tiny_config(**federation))).run(out_dir=tmp_path, progress=False)
    federation["rounds"] = 3
    longer = Experiment(validate_config(tiny_config(**federation))).run(resume_dir=first.run_dir, progress=False)
    summaries = [json.loads((r.run_dir / "summary.json").read_text())["components"] for r in (first, longer)]
    (before,), (after,) = (list(s.values()) for s in summaries)
    assert after["noise_multiplier"] == before["noise_multiplier"] and before["calibrated_noise_multiplier"]
    assert [r[f"{plugin}/epsilon"] for r in longer.history[:2]] == [r[f"{plugin}/epsilon"] for r in first.history]
    assert "calibrated before round 1 to reach target_epsilon = 4 after 2 rounds" in after["guarantee"]


def run_cli(tmp_path, config, command="run"):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    args = [command, str(path)] + (["--out", str(tmp_path / "runs")] if command == "run" else [])
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("plugin", ["dp_sgd", "dp_fedavg"])
def test_a_budget_stops_the_run_before_the_round_that_would_exceed_it(tmp_path, plugin):
    """A budget between round 2's and round 3's epsilon of the same run without one: the run exits
    0 after round 2, summary.json says why, and its epsilon is within the budget."""
    params = {"noise_multiplier": 1.0, "delta": 1e-4}
    federation = {"rounds": 6}
    if plugin == "dp_sgd":
        federation["agent_plugins"] = [{"name": "dp_sgd", **params}]
        federation["sampler"] = {"name": "all"}  # every agent every round: the worst case is what happens
    else:
        federation["aggregator"] = {"name": "fedavg", "weighted": False}
        federation["server_plugins"] = [{"name": "dp_fedavg", **params}]
    free = Experiment(validate_config(tiny_config(**federation))).run(out_dir=tmp_path / "free", progress=False)
    epsilons = [row[f"{plugin}/epsilon"] for row in free.history]
    budget = (epsilons[1] + epsilons[2]) / 2
    config = tiny_config(**federation)
    entries = config["federation"]["agent_plugins" if plugin == "dp_sgd" else "server_plugins"]
    entries[0]["max_epsilon"] = budget
    result = run_cli(tmp_path, config)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["stop"]["before_round"] == 3 and summary["stop"]["successful"] is True
    assert f"max_epsilon = {budget:g}" in summary["stop"]["reason"]
    (component,) = summary["components"].values()
    assert component["epsilon"] == pytest.approx(epsilons[1], rel=1e-12) and component["epsilon"] <= budget


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"clip_norm": 0}, "'federation.agent_plugins[0].clip_norm' = 0: Input should be greater than 0"),
        ({"noise_multiplier": -1}, "'federation.agent_plugins[0].noise_multiplier' = -1"),
        ({"delta": 1.5}, "'federation.agent_plugins[0].delta' = 1.5: Input should be less than 1"),
        ({"delta": 0.01}, "delta = 0.01 must be below 1 / training samples"),
        ({"noise_multiplier": 1, "target_epsilon": 2}, "noise_multiplier and target_epsilon are mutually exclusive"),
    ],
)
def test_bad_dp_sgd_input_exits_2_naming_the_field(tmp_path, params, expected):
    result = run_cli(tmp_path, tiny_config(agent_plugins=[{"name": "dp_sgd", **params}]), command="validate")
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_two_plugins_that_compute_gradients_are_refused(tmp_path):
    result = run_cli(tmp_path, tiny_config(agent_plugins=["dp_sgd", "dp_sgd"]), command="validate")
    assert result.exit_code == 2 and "federation.agent_plugins: dp_sgd, dp_sgd each implement epoch_batches; at " \
        "most one of them may be listed" in " ".join(result.output.split()), result.output


def test_a_model_with_batchnorm_is_refused(tmp_path):
    config = tiny_config(agent_plugins=["dp_sgd"])
    config["model"] = {"name": "resnet18"}
    result = run_cli(tmp_path, config, command="validate")
    assert result.exit_code == 2 and "federation.agent_plugins[0] 'dp_sgd' cannot be used here: the model has " \
        "BatchNorm layers (net.backbone.bn1" in " ".join(result.output.split()), result.output
    plugin = build("agent_plugin", "dp_sgd")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"the model has BatchNorm layers \(1\).*per-sample gradients"):
        plugin.check_run(RunPlan(4, 1, None, None, model=model))


@pytest.mark.slow
def test_distributed_over_two_gloo_processes_equals_one_process(tmp_path):
    """Two CPU processes train disjoint halves of each round's agents: the noise and the Poisson
    batches are seeded per agent and round, and each agent's step count travels in its result, so
    the model and every round's epsilon equal one process's bit for bit (about 30 s)."""
    import csv

    config = tiny_config(agent_plugins=[{"name": "dp_sgd", "noise_multiplier": 0.8, "delta": 1e-4}],
                         sampler={"name": "uniform", "count": 5}, backend="distributed")
    runs = run_in_one_and_two_processes(tmp_path, config)
    epsilons = [[row["dp_sgd/epsilon"] for row in csv.DictReader(open(run / "metrics.csv"))] for run in runs]
    assert epsilons[0] == epsilons[1] and len(epsilons[0]) == 3


def test_many_shard_sizes_calibrate_for_one_pair_that_dominates_them():
    """Ten undominated (rate, steps) pairs: the calibration uses (highest rate, most steps), whose
    epsilon bounds every pair's, so each pair's library epsilon is at or below the target."""
    from flcore_plugins.server_plugins import privacy_accounting

    pairs = [(8 / n, 3 * round(n / 8)) for n in range(20, 120, 10)]
    assert len(privacy_accounting.dominant(pairs)) == 10
    z = privacy_accounting.calibrate_noise(2.0, 1e-5, pairs)
    assert max(library_epsilon(q, z, t, 1e-5) for q, t in pairs) <= 2.0
    bound = library_epsilon(max(q for q, _ in pairs), 0.99 * z, max(t for _, t in pairs), 1e-5)
    assert bound > 2.0
