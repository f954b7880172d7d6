"""The ``poisson`` sampler: each agent in independently at ``rate`` (checked statistically), and
``dp_fedavg``'s exact accounting of it against dp-accounting called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flcore.agents import AgentPopulation
from flcore.partition import Partition
from flcore.protocol import AgentResult, RunPlan
from flcore.testing import build, check_sampler, round_context

dp_accounting = pytest.importorskip("dp_accounting")


def population(agents: int) -> AgentPopulation:
    return AgentPopulation(Partition.from_shards([np.array([a]) for a in range(agents)]))


def test_poisson_honours_the_sampler_interface():
    check_sampler("poisson", rate=0.5)


def test_each_agent_is_included_independently_at_the_rate():
    """400 agents over 300 rounds at q = 0.15: the overall inclusion frequency is within 4 standard
    errors of q, every agent's own frequency within 5 of its binomial bound, the cohort's size
    varies with the binomial variance N q (1 - q) (a fixed-size draw has none), and two agents'
    inclusions are uncorrelated."""
    agents, rounds, q = 400, 300, 0.15
    sampler, pop = build("sampler", "poisson", rate=q), population(agents)
    chosen = np.zeros((rounds, agents), dtype=bool)
    for r in range(rounds):
        chosen[r, sampler.sample(pop, r, np.random.default_rng([7, r]))] = True
    total = rounds * agents
    assert abs(chosen.mean() - q) < 4 * math.sqrt(q * (1 - q) / total)
    assert np.abs(chosen.mean(axis=0) - q).max() < 5 * math.sqrt(q * (1 - q) / rounds)
    sizes = chosen.sum(axis=1)
    variance = agents * q * (1 - q)
    # the sample variance of 300 binomial draws is within 30 % of the true one far beyond 4 sigma
    assert abs(sizes.var(ddof=1) / variance - 1) < 0.3
    correlation = np.corrcoef(chosen[:, 0::2].ravel(), chosen[:, 1::2].ravel())[0, 1]
    assert abs(correlation) < 4 / math.sqrt(total / 2)


def test_only_available_agents_are_chosen_and_the_choice_is_seeded_per_round():
    sampler, pop = build("sampler", "poisson", rate=0.5), population(60)
    available = np.arange(0, 60, 4)
    picks = [sampler.sample(pop, r, np.random.default_rng([3, r]), available) for r in range(20)]
    assert all(np.isin(p, available).all() for p in picks)
    again = [sampler.sample(pop, r, np.random.default_rng([3, r]), available) for r in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(picks, again))
    assert np.concatenate(picks).size > 0


def test_samplers_declare_their_inclusion_rate():
    assert build("sampler", "poisson", rate=0.25).inclusion_rate() == 0.25
    for name in ("uniform", "all", "weighted", "round_robin"):
        assert build("sampler", name).inclusion_rate() is None


def test_dp_fedavg_with_poisson_sampling_is_the_librarys_poisson_answer_and_says_exact():
    """Three rounds whose cohorts vary in size (3, 1, 6 of 20 agents): every round is accounted at the
    sampler's q = 0.2, whatever it selected, and the mean divides by q N = 4."""
    z, delta, q, agents = 0.9, 1e-3, 0.2, 20
    plugin = build("server_plugin", "dp_fedavg", noise_multiplier=z, clip_norm=10.0, delta=delta)
    plugin.check_run(RunPlan(agents, 3, agents, None, sampler=build("sampler", "poisson", rate=q)))
    strategy = build("aggregator", "fedavg", weighted=False)
    for r, cohort in enumerate((3, 1, 6)):
        context = round_context(r, agents=agents, dim=4)
        context.selected = np.arange(cohort)
        updates = [AgentResult(i, torch.ones(4, dtype=torch.float64), 5) for i in range(cohort)]
        for update in updates:
            plugin.process_update(context, update)
            strategy.accumulate(update)
            update.delta = None
        total = strategy.update_sum(updates)
        plugin.process_sum(context, total)
        assert total.weight == pytest.approx(q * agents)
        plugin.on_round_end(context, updates)
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), r + 1)
        assert context.metrics["dp_fedavg/epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    assert plugin.rates == [q] * 3
    assert "Poisson sampling (exact)" in plugin.guarantee() and "approximation," not in plugin.guarantee()


# ------------------------------------------------------------------------------ rounds that select nobody
def empty_round_config(server_plugins=(), rounds=6):
    """The tiny experiment under Poisson sampling at q = 0.1 of 8 agents: rounds 2 and 3 select
    nobody (checked), with stall_rounds = 1, so an empty round counted as a stall would fail it."""
    from flcore.testing import tiny_config

    return tiny_config(rounds=rounds, sampler={"name": "poisson", "rate": 0.1}, stall_rounds=1,
                       aggregator={"name": "fedavg", "weighted": False}, server_plugins=list(server_plugins))


def run_rounds(tmp_path, config, name, stop=None):
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    return Experiment(validate_config(config)).run(out_dir=tmp_path / name, progress=False, stop_after_rounds=stop)


def flat(result):
    return torch.cat([v.reshape(-1) for v in result.state_dict.values() if v.is_floating_point()])


def test_a_dp_round_that_selects_nobody_releases_noise_alone_and_is_accounted(tmp_path):
    """dp_fedavg (z = 1, C = 0.5): round 2 selects nobody, and the model moves from round 1's by
    noise alone of standard deviation z C / (q N) = 0.625 per coordinate (within 4 standard errors,
    about 8 %: leaving the model unchanged, or dividing by the count, the agents or nothing, fails);
    epsilon composes every round, the empty ones too; stall_rounds = 1 does not stop the run."""
    z, clip, q, agents, delta = 1.0, 0.5, 0.1, 8, 1e-2
    config = empty_round_config([{"name": "dp_fedavg", "noise_multiplier": z, "clip_norm": clip, "delta": delta}])
    whole = run_rounds(tmp_path, config, "whole")
    assert [row["selected"] for row in whole.history][:3] == [2, 0, 0]
    one, two = run_rounds(tmp_path, config, "one", stop=1), run_rounds(tmp_path, config, "two", stop=2)
    noise = (flat(two) - flat(one)).double()
    sigma = z * clip / (q * agents)
    assert abs(float(noise.std()) - sigma) < 4 * sigma / math.sqrt(2 * noise.numel())
    assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(noise.numel())
    for r, row in enumerate(whole.history):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), r + 1)
        assert row["dp_fedavg/epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)


def test_without_a_dp_plugin_a_round_that_selects_nobody_leaves_the_model_and_is_no_stall(tmp_path):
    plain = empty_round_config()
    one, three = run_rounds(tmp_path, plain, "one", stop=1), run_rounds(tmp_path, plain, "three", stop=3)
    assert [row["selected"] for row in three.history] == [2, 0, 0]
    assert torch.equal(flat(one), flat(three))


def test_dp_rounds_whose_selected_agents_all_fail_still_stop_the_run(tmp_path):
    """Noise is released in such rounds too, but they are stalls: every agent diverges (lr 1e30)."""
    from flcore.errors import RunFailure

    config = empty_round_config([{"name": "dp_fedavg", "noise_multiplier": 1.0, "clip_norm": 0.5, "delta": 1e-2}])
    config["federation"].update(sampler={"name": "poisson", "rate": 0.9}, stall_rounds=2, on_agent_failure="skip")
    config["training"]["optimizer"]["lr"] = 1e30
    with pytest.warns(UserWarning), pytest.raises(RunFailure, match="no update was accepted in 2 consecutive rounds"):
        run_rounds(tmp_path, config, "failing")
