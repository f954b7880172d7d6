"""Every built-in aggregator against an independent NumPy reference, on random updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore.protocol import AgentResult
from flcore.registry import discover
from flcore.testing import round_context

RNG = np.random.default_rng(0)
N_AGENTS, DIM = 7, 13


def make_updates(rng=RNG):
    deltas = rng.normal(size=(N_AGENTS, DIM))
    counts = rng.integers(5, 50, size=N_AGENTS)
    updates = [AgentResult(i, torch.tensor(d, dtype=torch.float64), int(n)) for i, (d, n) in enumerate(zip(deltas, counts))]
    return deltas, counts, updates


def build(name, **params):
    component = discover().resolve("aggregator", name)
    return component.load()(component.params_model()(**params))


def run(name, rounds=1, **params):
    aggregator = build(name, **params)
    w = torch.tensor(RNG.normal(size=DIM))
    w0 = w.numpy().copy()
    history = []
    for r in range(rounds):
        deltas, counts, updates = make_updates()
        history.append((deltas, counts))
        w = aggregator.aggregate(w, updates, round_context(r))
    return w0, history, w.numpy()


def test_fedavg_weighted_and_unweighted():
    w0, [(d, n)], out = run("fedavg")
    np.testing.assert_allclose(out, w0 + (n[:, None] * d).sum(0) / n.sum(), rtol=1e-12)
    w0, [(d, n)], out = run("fedavg", weighted=False, server_lr=0.5)
    np.testing.assert_allclose(out, w0 + 0.5 * d.mean(0), rtol=1e-12)


def test_fedavgm_keeps_server_momentum_across_rounds():
    w0, hist, out = run("fedavgm", rounds=3, momentum=0.8, server_lr=0.7)
    w, v = w0.copy(), np.zeros(DIM)
    for d, n in hist:
        v = 0.8 * v + (n[:, None] * d).sum(0) / n.sum()
        w = w + 0.7 * v
    np.testing.assert_allclose(out, w, rtol=1e-12)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers(name):
    p = dict(server_lr=0.05, beta1=0.85, beta2=0.97, tau=0.01)
    w0, hist, out = run(name, rounds=4, **p)
    w, m, v = w0.copy(), np.zeros(DIM), np.full(DIM, p["tau"] ** 2)
    for d, n in hist:
        delta = (n[:, None] * d).sum(0) / n.sum()
        m = p["beta1"] * m + (1 - p["beta1"]) * delta
        if name == "fedadam":
            v = p["beta2"] * v + (1 - p["beta2"]) * delta**2
        elif name == "fedyogi":
            v = v - (1 - p["beta2"]) * delta**2 * np.sign(v - delta**2)
        else:
            v = v + delta**2
        w = w + p["server_lr"] * m / (np.sqrt(v) + p["tau"])
    np.testing.assert_allclose(out, w, rtol=1e-10)


def test_fedadam_state_round_trips():
    a = build("fedadam")
    _, _, updates = make_updates()
    w = torch.zeros(DIM, dtype=torch.float64)
    a.aggregate(w, updates, round_context(0))
    b = build("fedadam")
    b.load_state_dict(a.state_dict())
    _, _, updates = make_updates()
    torch.testing.assert_close(a.aggregate(w, updates, round_context(1)), b.aggregate(w, updates, round_context(1)))


@pytest.mark.parametrize("agents", [6, 7])
def test_fedmedian_matches_numpy_median(agents):
    aggregator = build("fedmedian")
    d = RNG.normal(size=(agents, DIM))
    updates = [AgentResult(i, torch.tensor(x), 10) for i, x in enumerate(d)]
    out = aggregator.aggregate(torch.zeros(DIM, dtype=torch.float64), updates, round_context(0)).numpy()
    np.testing.assert_allclose(out, np.median(d, axis=0), rtol=1e-12)


def test_trimmed_mean_matches_scipy_definition():
    w0, [(d, n)], out = run("trimmed_mean", beta=0.2)
    cut = int(np.floor(0.2 * N_AGENTS))
    ref = np.sort(d, axis=0)[cut : N_AGENTS - cut].mean(0)
    np.testing.assert_allclose(out, w0 + ref, rtol=1e-12)


def _krum_scores(d, f):
    dist = ((d[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    k = len(d) - f - 2
    return np.array([np.sort(np.delete(dist[i], i))[:k].sum() for i in range(len(d))])


def test_krum_picks_the_update_with_the_lowest_score_and_resists_an_outlier():
    d = RNG.normal(size=(N_AGENTS, DIM))
    d[3] += 100.0  # a Byzantine update
    updates = [AgentResult(i, torch.tensor(x), 10) for i, x in enumerate(d)]
    out = build("krum", byzantine=1).aggregate(torch.zeros(DIM, dtype=torch.float64), updates, round_context(0))
    best = int(np.argmin(_krum_scores(d, 1)))
    assert best != 3
    np.testing.assert_allclose(out.vector.numpy(), d[best], rtol=1e-12)
    assert out.kept == {best: 1.0}  # which update it chose, for an attack's malicious_kept


def test_multikrum_averages_the_m_best():
    d = RNG.normal(size=(N_AGENTS, DIM))
    updates = [AgentResult(i, torch.tensor(x), 10) for i, x in enumerate(d)]
    out = build("multikrum", byzantine=2, m=3).aggregate(torch.zeros(DIM, dtype=torch.float64), updates, round_context(0))
    chosen = np.argsort(_krum_scores(d, 2))[:3]
    np.testing.assert_allclose(out.vector.numpy(), d[chosen].mean(0), rtol=1e-12)
    assert out.kept == {int(i): 1 / 3 for i in chosen}


def test_krum_with_too_few_updates_says_why():
    _, _, updates = make_updates()
    with pytest.raises(ValueError, match="n - f - 2"):
        build("krum", byzantine=6).aggregate(torch.zeros(DIM, dtype=torch.float64), updates, round_context(0))


def test_fedprox_penalty_is_half_mu_squared_distance():
    """FedProx is FedAvg on the server plus the proximal agent-side plugin, with the same mu."""
    from flcore.protocol import Requirement
    from flcore.testing import build as build_component

    strategy = build("fedprox", mu=0.3)
    assert list(type(strategy).requirements(strategy.params)) == [
        Requirement("agent_plugin", "flcore:proximal", {"mu": 0.3})]
    assert list(type(build("fedavg")).requirements(build("fedavg").params)) == []
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    global_params = [torch.tensor([0.5, 0.0]), torch.tensor([[1.0]])]
    penalty = build_component("agent_plugin", "proximal", mu=0.3).loss_term(None, params, global_params)
    assert penalty.item() == pytest.approx(0.5 * 0.3 * (0.25 + 4 + 4))


def test_fedsgd_trains_one_full_batch_step():
    from flcore.config import TrainingConfig

    training = build("fedsgd").configure_training(TrainingConfig(epochs=5, batch_size=8))
    assert (training.epochs, training.batch_size, training.max_steps) == (1, None, 1)


@pytest.mark.parametrize("name,params", [("fedavg", {}), ("fedavg", {"weighted": False}), ("fedavgm", {}),
                                         ("fedprox", {}), ("fedadam", {}), ("fedyogi", {})])
def test_streaming_aggregation_equals_aggregating_the_list(name, params):
    """The engine feeds streaming aggregators one update at a time and drops the deltas."""
    direct, streamed = build(name, **params), build(name, **params)
    assert streamed.streaming
    w = torch.tensor(RNG.normal(size=DIM))
    a = b = w
    for r in range(3):
        _, _, updates = make_updates()
        a = direct.aggregate(a, updates, round_context(r))
        for u in updates:
            streamed.accumulate(u)
        light = [AgentResult(u.agent_id, None, u.num_samples) for u in updates]
        b = streamed.aggregate(b, light, round_context(r))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregator", ["krum", "multikrum"])
def test_krum_refuses_before_round_1_a_byzantine_count_the_cohort_cannot_meet(tmp_path, tiny_config, aggregator):
    """n > 2f + 2 (Blanchard et al. 2017) against the sampler's cohort: exit 2, no run folder."""
    from flcore.config import validate_config
    from flcore.errors import ConfigError
    from flcore.experiment import Experiment

    tiny_config["federation"].update(aggregator={"name": aggregator, "byzantine": 1},
                                     sampler={"name": "uniform", "count": 4})
    with pytest.raises(ConfigError, match=rf"federation.aggregator '{aggregator}' cannot be used here: 'byzantine' = 1 "
                                          r"is too large for the at most 4 agents .* so 'byzantine' <= 0"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*"))
    tiny_config["federation"]["sampler"] = {"name": "uniform", "count": 5}  # 5 > 2 * 1 + 2
    tiny_config["federation"]["rounds"] = 1
    assert Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "ok").history
