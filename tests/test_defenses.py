"""Bulyan, centered clipping, FLTrust and norm bounding against NumPy references on fixed updates,
and the robustness each paper states, on crafted updates with f Byzantine ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore.aggregation import weighted_mean_delta
from flcore.config import validate_config
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.protocol import AgentResult, Aggregate, RoundContext
from flcore.testing import build, check_aggregator, round_context


def updates_of(deltas, sizes=None):
    sizes = sizes if sizes is not None else [10] * len(deltas)
    return [AgentResult(i, torch.tensor(d, dtype=torch.float64), int(n)) for i, (d, n) in enumerate(zip(deltas, sizes))]


def aggregate(aggregator, deltas, context=None, start=None):
    start = torch.zeros(deltas.shape[1], dtype=torch.float64) if start is None else start
    out = aggregator.aggregate(start, updates_of(deltas), context or round_context(0, dim=deltas.shape[1]))
    return out if isinstance(out, Aggregate) else Aggregate(out)


def test_the_new_strategies_honour_the_aggregator_interface():
    check_aggregator("bulyan")
    check_aggregator("centered_clipping", tau=0.5, iterations=2)


# ------------------------------------------------------------------------------ Bulyan
def bulyan_reference(d, f):
    """El Mhamdi et al.'s two steps, in plain NumPy loops."""
    n = len(d)
    dist = ((d[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    remaining, chosen = list(range(n)), []
    while len(chosen) < n - 2 * f:
        k = max(min(n - f - 2, len(remaining) - 1), 1)
        scores = [np.sort([dist[i, j] for j in remaining if j != i])[:k].sum() if len(remaining) > 1 else 0.0
                  for i in remaining]
        chosen.append(remaining.pop(int(np.argmin(scores))))
    selected = d[chosen]
    beta = len(chosen) - 2 * f
    median = np.median(selected, axis=0)
    out = np.array([selected[np.argsort(np.abs(selected[:, j] - median[j]), kind="stable")[:beta], j].mean()
                    for j in range(d.shape[1])])
    return out, chosen


@pytest.mark.parametrize("n,f", [(7, 1), (11, 2), (12, 2)])
def test_bulyan_matches_the_reference_and_reports_its_selection_set(n, f):
    d = np.random.default_rng(n).normal(size=(n, 9))
    out = aggregate(build("aggregator", "bulyan", byzantine=f), d)
    expected, chosen = bulyan_reference(d, f)
    np.testing.assert_allclose(out.vector.numpy(), expected, rtol=1e-10)
    assert out.kept == {i: 1 / (n - 2 * f) for i in chosen}


def test_bulyan_is_unmoved_by_f_far_byzantine_updates():
    """Each coordinate stays within the honest values' range, whatever the f outliers' size."""
    rng = np.random.default_rng(5)
    honest = rng.normal(size=(9, 6))
    outs = []
    for magnitude in (1e6, 1e9):
        d = np.vstack([honest, magnitude * np.ones((2, 6))])  # two colluding, identical outliers
        out = aggregate(build("aggregator", "bulyan", byzantine=2), d)
        assert set(out.kept) <= set(range(9)), "no Byzantine update is selected"
        outs.append(out.vector.numpy())
    assert np.all(outs[0] >= honest.min(0)) and np.all(outs[0] <= honest.max(0))
    np.testing.assert_array_equal(outs[0], outs[1])


# ------------------------------------------------------------------------------ centered clipping
def test_centered_clipping_matches_the_reference_across_rounds_and_restores_its_center():
    rng = np.random.default_rng(6)
    rounds = [rng.normal(size=(5, 8)) * rng.uniform(0.1, 3, size=(5, 1)) for _ in range(3)]
    tau, iterations = 0.7, 2
    v, w, expected = np.zeros(8), np.zeros(8), []
    for d in rounds:
        for _ in range(iterations):
            offsets = d - v
            v = v + (offsets * np.minimum(1.0, tau / np.linalg.norm(offsets, axis=1))[:, None]).mean(0)
        w = w + v
        expected.append(w.copy())
    first = build("aggregator", "centered_clipping", tau=tau, iterations=iterations)
    out = aggregate(first, rounds[0])
    np.testing.assert_allclose(out.vector.numpy(), expected[0], rtol=1e-12)
    restored = build("aggregator", "centered_clipping", tau=tau, iterations=iterations)
    restored.load_state_dict(first.state_dict())  # as a resume would
    for d, target in zip(rounds[1:], expected[1:]):
        out = aggregate(restored, d, start=out.vector)
        np.testing.assert_allclose(out.vector.numpy(), target, rtol=1e-12)


def test_centered_clipping_lets_f_byzantine_updates_move_the_center_at_most_f_tau_over_n():
    """Karimireddy et al.: with the center at the honest update h, f arbitrary updates move it by at
    most f * tau / n per iteration."""
    n, f, tau = 10, 3, 0.2
    h = np.random.default_rng(7).normal(size=12)
    cc = build("aggregator", "centered_clipping", tau=tau)
    cc.load_state_dict({"center": torch.tensor(h)})  # the history: last round's honest update
    byzantine = np.random.default_rng(8).normal(size=(f, 12)) * 1e6
    out = aggregate(cc, np.vstack([np.tile(h, (n - f, 1)), byzantine]))
    center = cc.center.numpy()
    assert np.linalg.norm(center - h) <= f * tau / n + 1e-12
    shares = out.kept
    assert all(shares[i] > shares[n - 1] for i in range(n - f))  # far updates count less


# ------------------------------------------------------------------------------ FLTrust
def fltrust_context(server_delta, dim, population_agents=10):
    def trainer(context, indices, instruction):
        return AgentResult(-1, torch.tensor(server_delta, dtype=torch.float64), len(indices))

    context = round_context(0, agents=population_agents, dim=dim)
    context.trainer = trainer
    return context


def fltrust_reference(d, g0):
    cos = d @ g0 / (np.linalg.norm(d, axis=1) * np.linalg.norm(g0))
    trust = np.maximum(cos, 0)
    rescaled = d * (np.linalg.norm(g0) / np.linalg.norm(d, axis=1))[:, None]
    return (trust[:, None] * rescaled).sum(0) / trust.sum(), trust


def armed_fltrust(root_size=4):
    from flcore.agents import AgentPopulation
    from flcore.partition import Partition
    from flcore.protocol import SETUP_STREAM, component_rng

    strategy = build("aggregator", "fltrust", root_size=root_size)
    population = AgentPopulation(Partition.from_shards([np.arange(3 * a, 3 * a + 3) for a in range(10)]))
    strategy.setup(population, component_rng(0, strategy, SETUP_STREAM))
    return strategy


def test_fltrust_matches_the_reference_and_trains_on_its_root_samples():
    rng = np.random.default_rng(9)
    d, g0 = rng.normal(size=(6, 7)) * rng.uniform(0.1, 5, size=(6, 1)), rng.normal(size=7)
    strategy = armed_fltrust(root_size=4)
    assert len(strategy.root) == 4 and len(set(strategy.root.tolist())) == 4
    assert set(strategy.root.tolist()) <= set(range(30))
    trained = []
    context = fltrust_context(g0, 7)
    inner = context.trainer
    context.trainer = lambda c, indices, instruction: trained.append(list(indices)) or inner(c, indices, instruction)
    out = aggregate(strategy, d, context)
    expected, trust = fltrust_reference(d, g0)
    np.testing.assert_allclose(out.vector.numpy(), expected, rtol=1e-12)
    assert trained == [strategy.root.tolist()]
    np.testing.assert_allclose([out.kept[i] for i in range(6)], trust / trust.sum(), rtol=1e-12)


def test_fltrust_ignores_updates_against_the_server_direction_and_the_size_of_any_update():
    """Cao et al.: ReLU-clipped cosine trust gives a reversed update no weight, and matching every
    norm to the server update's makes boosting an update useless."""
    rng = np.random.default_rng(10)
    g0 = rng.normal(size=8)
    honest = g0 + 0.3 * rng.normal(size=(5, 8))
    flipped = np.vstack([honest, -4 * honest[:2]])
    boosted = np.vstack([honest, 1000 * honest[:2]])
    out_flipped = aggregate(armed_fltrust(), flipped, fltrust_context(g0, 8))
    np.testing.assert_allclose(out_flipped.vector.numpy(), aggregate(armed_fltrust(), honest,
                                                                     fltrust_context(g0, 8)).vector.numpy(), rtol=1e-12)
    assert out_flipped.kept[5] == out_flipped.kept[6] == 0.0
    out_boosted = aggregate(armed_fltrust(), boosted, fltrust_context(g0, 8))
    np.testing.assert_allclose(out_boosted.vector.numpy(), aggregate(armed_fltrust(), np.vstack(
        [honest, honest[:2]]), fltrust_context(g0, 8)).vector.numpy(), rtol=1e-10)
    nothing = aggregate(armed_fltrust(), -np.abs(rng.normal(size=(3, 8))), fltrust_context(np.abs(g0), 8))
    np.testing.assert_array_equal(nothing.vector.numpy(), np.zeros(8))  # no update trusted: no step


def test_fltrust_gives_no_weight_to_sign_flipped_agents_in_a_run(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=3, sampler="all", aggregator={"name": "fltrust", "root_size": 50},
                                     agent_plugins=[{"name": "sign_flip", "count": 2, "scale": 4}])
    history = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "fltrust").history
    assert [row["sign_flip/malicious_kept"] for row in history] == [0.0, 0.0, 0.0]
    tiny_config["federation"]["aggregator"] = "fedavg"
    broken = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "fedavg").history
    assert history[-1]["test_acc"] > broken[-1]["test_acc"] + 0.2  # 6 honest - 2 x 4 flipped: FedAvg ascends


# ------------------------------------------------------------------------------ norm bounding (Sun et al.)
def test_norm_bounding_caps_a_model_replacement_at_m_times_its_weight():
    """A boosted update that would replace the model under weighted FedAvg moves it by at most
    M * n_k / n once every update is clipped to norm M (and the mean by at most M)."""
    rng = np.random.default_rng(11)
    sizes = [20, 30, 50]
    target = rng.normal(size=10) * 5
    gamma = sum(sizes) / sizes[2]
    deltas = np.vstack([np.zeros(10), np.zeros(10), gamma * target])
    plugin = build("server_plugin", "norm_bound", max_norm=0.5)
    updates = updates_of(deltas, sizes)
    torch.testing.assert_close(weighted_mean_delta(updates), torch.tensor(target))  # unbounded: replaced
    context = round_context(0, dim=10)
    for update in updates:
        plugin.process_update(context, update)
    bounded = weighted_mean_delta(updates).numpy()
    assert np.linalg.norm(bounded) == pytest.approx(0.5 * sizes[2] / sum(sizes))
    np.testing.assert_allclose(bounded / np.linalg.norm(bounded), target / np.linalg.norm(target), rtol=1e-12)


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("aggregator", [{"name": "centered_clipping", "tau": 0.3}, {"name": "fltrust", "root_size": 40},
                                        {"name": "bulyan", "byzantine": 1}])
def test_a_stopped_and_resumed_defense_run_ends_bit_identical(tmp_path, tiny_config, aggregator):
    """Centered clipping's center comes back from the checkpoint, FLTrust's root samples from its
    seeded set-up stream."""
    tiny_config["federation"].update(rounds=4, sampler="all", aggregator=aggregator,
                                     agent_plugins=[{"name": "alie", "count": 1}])
    config = validate_config(tiny_config)
    straight = Experiment(config).run(out_dir=tmp_path / "a")
    stopped = Experiment(config).run(out_dir=tmp_path / "b", stop_after_rounds=2)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    scores = [[(r["test_acc"], r["alie/malicious_kept"]) for r in run.history] for run in (straight, resumed)]
    assert scores[0] == scores[1] and len(scores[0]) == 4


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("aggregator,message", [
    ({"name": "bulyan", "byzantine": 1}, r"federation.aggregator 'bulyan' cannot be used here: 'byzantine' = 1 is too "
                                         r"large for the at most 6 agents .* Bulyan needs n >= 4f \+ 3"),
    ({"name": "fltrust", "root_size": 5000}, r"'root_size' = 5000 is more than the 1438 training samples"),
])
def test_defenses_refuse_what_cannot_work_before_round_1(tmp_path, tiny_config, aggregator, message):
    tiny_config["federation"].update(aggregator=aggregator, sampler={"name": "uniform", "count": 6})
    with pytest.raises(ConfigError, match=message):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*"))


def test_bulyan_with_fewer_updates_than_4f_plus_3_in_a_round_says_why():
    with pytest.raises(ValueError, match=r"Bulyan needs n >= 4f \+ 3 updates, got n=6, f=1"):
        aggregate(build("aggregator", "bulyan", byzantine=1), np.zeros((6, 3)), RoundContext(
            0, 1, 0, round_context().population, torch.zeros(3)))
