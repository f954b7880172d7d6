"""Min-Max and DnC against NumPy references of the paper's algorithms, through flcore's public
testing helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore.agents import AgentPopulation
from flcore.config import validate_config
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import SETUP_STREAM, AgentResult, RoundContext, component_rng
from flcore.testing import build, check_agent_plugin, check_aggregator, round_context, tiny_config


def test_the_defense_and_the_attack_honour_flcore_interfaces(tmp_path):
    check_aggregator("dnc", byzantine=1)
    check_aggregator("dnc", byzantine=1, subsample=5, iterations=3)
    check_agent_plugin("min_max", tmp_path, perturbation="std")


# ------------------------------------------------------------------------------ Min-Max
def gamma_reference(honest, p, gamma_init=10.0, tolerance=1e-5):
    """Algorithm 1 of the paper, in NumPy."""
    mean = honest.mean(0)
    bound = max(np.linalg.norm(a - b) for a in honest for b in honest)
    gamma, step, succeeded = gamma_init, gamma_init, 0.0
    while abs(succeeded - gamma) > tolerance:
        if np.linalg.norm(honest - (mean - gamma * p), axis=1).max() <= bound:
            succeeded, gamma = gamma, gamma + step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succeeded


def armed(agents=8, ids=(0, 5), **params):
    attack = build("agent_plugin", "min_max", ids=list(ids), **params)
    population = AgentPopulation(Partition.from_shards([np.array([a]) for a in range(agents)]), attack.state_fields())
    attack.setup(population, component_rng(0, attack, SETUP_STREAM))
    return attack, population


@pytest.mark.parametrize("kind", ["unit", "sign", "std"])
def test_min_max_sends_the_mean_moved_by_the_largest_gamma_the_honest_spread_allows(kind):
    rng = np.random.default_rng(1)
    deltas = rng.normal(size=(8, 12)) + 0.5
    attack, population = armed(perturbation=kind)
    results = [AgentResult(a, torch.tensor(d), 1) for a, d in enumerate(deltas)]
    context = RoundContext(0, 1, 0, population, torch.zeros(12), selected=np.arange(8))
    attack.on_results(context, results)
    honest = deltas[[1, 2, 3, 4, 6, 7]]
    mean = honest.mean(0)
    p = {"unit": mean / np.linalg.norm(mean), "sign": np.sign(mean), "std": honest.std(0, ddof=1)}[kind]
    gamma = gamma_reference(honest, p)
    assert context.metrics["min_max/gamma"] == pytest.approx(gamma, rel=1e-9)
    crafted = results[0].delta.numpy()
    np.testing.assert_allclose(crafted, mean - gamma * p, rtol=1e-9)
    np.testing.assert_array_equal(results[5].delta.numpy(), crafted)
    bound = max(np.linalg.norm(a - b) for a in honest for b in honest)
    assert np.linalg.norm(honest - crafted, axis=1).max() <= bound  # inside the honest spread
    assert np.linalg.norm(honest - (mean - (gamma + 1e-3) * p), axis=1).max() > bound  # and as far as it goes
    for agent in (1, 2, 3, 4, 6, 7):
        np.testing.assert_array_equal(results[agent].delta.numpy(), deltas[agent])


# ------------------------------------------------------------------------------ DnC
def dnc_reference(d, removed, subsets):
    kept = set(range(len(d)))
    for coordinates in subsets:
        centered = d[:, coordinates] - d[:, coordinates].mean(0)
        top = np.linalg.svd(centered, full_matrices=False)[2][0]
        scores = (centered @ top) ** 2
        kept &= set(np.argsort(scores, kind="stable")[: len(d) - removed].tolist())
    return sorted(kept)


def updates_of(deltas):
    return [AgentResult(i, torch.tensor(d), 10) for i, d in enumerate(deltas)]


def test_dnc_matches_the_reference_on_all_coordinates_and_on_seeded_subsets():
    rng = np.random.default_rng(2)
    d = rng.normal(size=(9, 30))
    strategy = build("aggregator", "dnc", byzantine=2, filter_frac=1.5)
    out = strategy.aggregate(torch.zeros(30, dtype=torch.float64), updates_of(d), round_context(0, dim=30))
    kept = dnc_reference(d, 3, [np.arange(30)] * 5)
    np.testing.assert_allclose(out.vector.numpy(), d[kept].mean(0), rtol=1e-12)
    assert out.kept == {i: 1 / len(kept) for i in kept}
    sampled = build("aggregator", "dnc", byzantine=2, subsample=7, iterations=4)
    context = round_context(3, dim=30)
    out = sampled.aggregate(torch.zeros(30, dtype=torch.float64), updates_of(d), context)
    stream = context.rng(sampled)  # the strategy's own round stream, drawn the same way
    subsets = [np.sort(stream.choice(30, size=7, replace=False)) for _ in range(4)]
    np.testing.assert_allclose(out.vector.numpy(), d[dnc_reference(d, 2, subsets)].mean(0), rtol=1e-12)


def test_dnc_removes_f_updates_that_push_along_one_direction():
    """The paper's premise: an effective attack shifts the updates along a direction, which the top
    singular vector of the centered updates exposes."""
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(12, 40))
    direction = rng.normal(size=40)
    malicious = honest[:3].mean(0) + 4.0 * direction / np.linalg.norm(direction) * np.sqrt(40) + 0.01 * rng.normal(
        size=(3, 40))
    d = np.vstack([honest, malicious])
    out = build("aggregator", "dnc", byzantine=3).aggregate(torch.zeros(40, dtype=torch.float64), updates_of(d),
                                                             round_context(0, dim=40))
    assert not set(out.kept) & {12, 13, 14}


def test_dnc_refuses_a_filter_that_would_remove_every_update(tmp_path):
    config = tiny_config(aggregator={"name": "dnc", "byzantine": 4}, sampler={"name": "uniform", "count": 4})
    with pytest.raises(ConfigError, match=r"federation.aggregator 'dnc' cannot be used here: 'byzantine' = 4"):
        Experiment(validate_config(config)).run(out_dir=tmp_path)


def test_dnc_against_min_max_in_a_run_reports_what_it_kept(tmp_path):
    config = tiny_config(rounds=3, sampler="all", aggregator={"name": "dnc", "byzantine": 2},
                         agent_plugins=[{"name": "min_max", "count": 2}])
    history = Experiment(validate_config(config)).run(out_dir=tmp_path, progress=False).history
    assert all(row["dnc/kept_share"] <= 6 / 8 for row in history)
    assert all(0.0 <= row["min_max/malicious_kept"] <= 2 / 6 for row in history)
