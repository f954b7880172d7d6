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
