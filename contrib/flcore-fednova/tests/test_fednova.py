"""FedNova against its definition, through flcore's public testing helpers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from flcore_fednova.fednova import coefficient_norm

from flcore.config import TrainingConfig
from flcore.errors import ConfigError, RunFailure
from flcore.protocol import AgentResult, Instruction
from flcore.testing import build, check_aggregator, round_context, run_tiny_experiment, tiny_config


def reference_norm(steps: int, rho: float) -> float:
    """``||a||_1`` summed from the paper's heavy-ball coefficient vector, entry by entry."""
    return float(np.sum([(1 - rho ** (steps - s + 1)) / (1 - rho) for s in range(1, steps + 1)]))


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.5, True)])
@pytest.mark.parametrize("steps", [1, 4, 17])
def test_coefficient_norm_is_how_far_torch_sgd_moves_on_a_constant_gradient(steps, momentum, nesterov):
    """On a linear loss every gradient is ``g``, so ``tau`` steps move the weights by exactly
    ``-lr * ||a||_1 * g``: torch's own optimizer is the reference."""
    g = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=momentum, nesterov=nesterov)
    for _ in range(steps):
        optimizer.zero_grad()
        (g * w).sum().backward()
        optimizer.step()
    torch.testing.assert_close(w.detach(), -0.1 * coefficient_norm(steps, momentum, nesterov) * g)
    if not nesterov:
        assert coefficient_norm(steps, momentum) == pytest.approx(reference_norm(steps, momentum), rel=1e-12)


def _updates() -> list[AgentResult]:
    rng = np.random.default_rng(3)
    steps, samples = [1, 3, 7, 12], [40, 5, 17, 90]
    return [AgentResult(agent, torch.from_numpy(rng.normal(size=11)), n, steps=tau)
            for agent, (tau, n) in enumerate(zip(steps, samples))]


def numpy_fednova(x: np.ndarray, updates: list[AgentResult], deltas: list[np.ndarray], rho: float, server_lr: float,
                  weighted: bool, lr_scales: dict[int, float]) -> tuple[np.ndarray, float]:
    """``x + server_lr * tau_eff * sum_i p_i delta_i / ||a_i||_1`` with ``tau_eff = sum_i p_i ||a_i||_1``."""
    n = np.array([u.num_samples if weighted else 1 for u in updates], dtype=np.float64)
    p = n / n.sum()
    a = np.array([lr_scales.get(u.agent_id, 1.0) * reference_norm(u.steps, rho) for u in updates])
    tau_eff = float(np.sum(p * a))
    return x + server_lr * tau_eff * np.sum([p_i * d / a_i for p_i, d, a_i in zip(p, deltas, a)], axis=0), tau_eff


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("streamed", [True, False])
def test_aggregate_equals_a_numpy_reference_of_the_rule(momentum, weighted, streamed):
    """Crafted updates after 1, 3, 7 and 12 steps; agent 2 instructed with lr_scale 2, which doubles its
    coefficients. Streamed as the engine does (deltas dropped once accumulated) or passed directly."""
    strategy = build("aggregator", "fednova", server_lr=0.5, weighted=weighted)
    strategy.configure_training(TrainingConfig(optimizer={"name": "sgd", "lr": 0.1, "momentum": momentum}))
    context = round_context(agents=4, dim=11)
    context.global_vector = torch.linspace(-1, 1, 11, dtype=torch.float64)
    instructions = [Instruction(agent, 1) for agent in range(4)]
    strategy.configure_round(context, instructions)
    instructions[2].lr_scale = 2.0  # a component instructed after the strategy
    updates = _updates()
    deltas = [u.delta.numpy().copy() for u in updates]
    if streamed:
        for update in updates:
            strategy.accumulate(update)
            update.delta = None
    out = strategy.aggregate(context.global_vector, updates, context)
    expected, tau_eff = numpy_fednova(context.global_vector.numpy(), updates, deltas, momentum, 0.5, weighted, {2: 2.0})
    np.testing.assert_allclose(out.vector.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert out.metrics["tau_eff"] == pytest.approx(tau_eff, rel=1e-12)
    p = np.array([u.num_samples if weighted else 1 for u in updates], dtype=np.float64)
    fedavg = context.global_vector.numpy() + 0.5 * np.average(deltas, axis=0, weights=p)
    assert not np.allclose(out.vector.numpy(), fedavg), "unequal steps must not reduce to FedAvg"


def test_the_next_round_starts_afresh():
    """Nothing of a round's sums leaks into the next one."""
    strategy = build("aggregator", "fednova")
    context = round_context(agents=4, dim=11)
    zeros = torch.zeros(11, dtype=torch.float64)
    strategy.aggregate(zeros, _updates(), context)
    second = strategy.aggregate(zeros, _updates(), context)
    updates = _updates()
    expected, _ = numpy_fednova(zeros.numpy(), updates, [u.delta.numpy() for u in updates], 0.0, 1.0, True, {})
    np.testing.assert_allclose(second.vector.numpy(), expected, rtol=1e-12)


def test_fednova_honours_the_aggregator_interface():
    check_aggregator("fednova")
    check_aggregator("fednova", server_lr=0.3, weighted=False)


def test_an_update_without_a_step_count_is_a_clear_failure():
    strategy = build("aggregator", "fednova")
    with pytest.raises(RunFailure, match="agent 0's accepted update reports steps = 0"):
        strategy.accumulate(AgentResult(0, torch.ones(3), 5))


def test_a_local_optimizer_without_defined_coefficients_is_a_config_error(tmp_path):
    config = tiny_config(aggregator="fednova")
    config["training"]["optimizer"] = {"name": "adam", "lr": 0.01}
    with pytest.raises(ConfigError, match="training.optimizer.name is 'adam'; expected 'sgd'"):
        run_tiny_experiment(tmp_path, config)
    assert not list(tmp_path.iterdir())  # no half-written run folder


def _config(aggregator, partitioner, training, backend="sequential", rounds=2):
    config = tiny_config(aggregator=aggregator, partitioner=partitioner, backend=backend, rounds=rounds,
                         sampler="all")
    config["training"] = training
    return config


def test_with_equal_step_counts_fednova_is_fedavg_bit_for_bit(tmp_path):
    """IID shards, every agent stopped after 3 momentum steps: all ``||a_i||_1`` are equal."""
    training = {"epochs": 2, "batch_size": 16, "max_steps": 3,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    fednova = run_tiny_experiment(tmp_path / "n", _config("fednova", "iid", training))
    fedavg = run_tiny_experiment(tmp_path / "a", _config("fedavg", "iid", training))
    for name, value in fedavg.state_dict.items():
        assert torch.equal(fednova.state_dict[name], value), name
    assert [row["fednova/tau_eff"] for row in fednova.history] == pytest.approx([coefficient_norm(3, 0.9)] * 2)


def test_with_unequal_step_counts_fednova_differs_and_reports_the_run_s_tau_eff(tmp_path):
    """Quantity-skewed shards and one epoch of batches of 32: agent i takes ceil(n_i / 32) steps, so
    round 1's tau_eff is sum_i n_i / n * ceil(n_i / 32) over the run's own shard sizes."""
    training = {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}}
    skew = {"name": "quantity_skew", "sigma": 1.0}
    fednova = run_tiny_experiment(tmp_path / "n", _config("fednova", skew, training))
    fedavg = run_tiny_experiment(tmp_path / "a", _config("fedavg", skew, training))
    assert any(not torch.allclose(fednova.state_dict[k], v) for k, v in fedavg.state_dict.items())
    with open(fednova.run_dir / "sampling.csv", newline="") as f:
        sizes = np.array([int(row["samples"]) for row in csv.DictReader(f)], dtype=np.float64)
    steps = np.array([math.ceil(n / 32) for n in sizes])
    assert len(set(steps.tolist())) > 1
    assert fednova.history[0]["fednova/tau_eff"] == pytest.approx(float(np.sum(sizes / sizes.sum() * steps)))


def test_vectorized_trains_the_sequential_model(tmp_path):
    """Unequal step counts, momentum: the lockstep backend reports each agent's own steps."""
    training = {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    skew = {"name": "quantity_skew", "sigma": 1.0}
    sequential = run_tiny_experiment(tmp_path / "s", _config("fednova", skew, training))
    vectorized = run_tiny_experiment(tmp_path / "v", _config("fednova", skew, training,
                                                             backend={"name": "vectorized", "strict": True}))
    assert json.loads((vectorized.run_dir / "summary.json").read_text())["backend"] == "vectorized"
    for name, value in sequential.state_dict.items():
        torch.testing.assert_close(vectorized.state_dict[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_distributed_processes_train_the_one_process_model_bit_for_bit(tmp_path):
    """Two gloo processes train disjoint halves of each round's agents and aggregate the gathered
    updates in selection order: the model equals one process's at the same thread count."""
    import os
    import subprocess
    import sys

    import yaml

    training = {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config("fednova", {"name": "quantity_skew", "sigma": 1.0}, training)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "flcore.cli", "run", str(config), "--out"]
    one = subprocess.run(command + [str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(command + [str(tmp_path / "two"), "--devices", "2"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert json.loads(next((tmp_path / "two").glob("*/summary.json")).read_text())["backend"] == "distributed"
    a = torch.load(next((tmp_path / "one").glob("*/model.pt")), weights_only=True)
    b = torch.load(next((tmp_path / "two").glob("*/model.pt")), weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
