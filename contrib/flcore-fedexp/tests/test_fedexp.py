"""FedExP against Algorithm 1 of the paper written in NumPy, through flcore's public testing helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore.protocol import AgentResult
from flcore.testing import build, check_aggregator, round_context, run_tiny_experiment, tiny_config


def fedexp_reference(w: np.ndarray, deltas: np.ndarray, epsilon: float) -> tuple[np.ndarray, float]:
    pseudo = -deltas  # the paper's Delta_i = w - w_i
    mean = pseudo.mean(axis=0)
    eta = max(1.0, (pseudo**2).sum() / (2 * len(pseudo) * ((mean**2).sum() + epsilon)))
    return w - eta * mean, eta


def test_fedexp_honours_the_aggregator_interface():
    check_aggregator("fedexp")


@pytest.mark.parametrize("streamed", [True, False])
def test_fedexp_follows_algorithm_1(streamed):
    rng = np.random.default_rng(0)
    deltas, w = rng.normal(size=(6, 9)), rng.normal(size=9)
    strategy = build("aggregator", "fedexp", epsilon=0.01)
    updates = [AgentResult(k, torch.tensor(d), 10 + k) for k, d in enumerate(deltas)]
    if streamed:
        for update in updates:
            strategy.accumulate(update)
    out = strategy.aggregate(torch.tensor(w), updates, round_context(dim=9))
    expected, eta = fedexp_reference(w, deltas, 0.01)
    assert eta > 1  # random directions disagree: extrapolation
    np.testing.assert_allclose(out.vector.numpy(), expected, rtol=1e-12)
    assert out.metrics["server_lr"] == pytest.approx(eta, rel=1e-12)


def test_agreeing_updates_give_a_step_size_of_one_that_is_uniform_fedavg():
    """Equal updates: sum ||d_i||^2 / (2 M ||d||^2) = 1/2, so eta_g = max(1, 1/2) = 1."""
    delta = torch.linspace(-1, 1, 5, dtype=torch.float64)
    updates = [AgentResult(k, delta.clone(), 3 + 7 * k) for k in range(4)]
    out = build("aggregator", "fedexp").aggregate(torch.zeros(5, dtype=torch.float64), updates, round_context(dim=5))
    assert out.metrics["server_lr"] == 1.0
    torch.testing.assert_close(out.vector, delta)


@pytest.mark.slow
def test_fedexp_learns_on_non_iid_shards_and_logs_its_step_size(tmp_path):
    config = tiny_config(rounds=6, aggregator="fedexp", partitioner={"name": "niid", "niid_factor": 2})
    result = run_tiny_experiment(tmp_path, config)
    assert all(row["fedexp/server_lr"] >= 1.0 for row in result.history)
    assert result.history[-1]["test_acc"] > 0.5
