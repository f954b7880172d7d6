"""Byzantine-robust aggregators: coordinate-wise median and trimmed mean, Krum and Multi-Krum.

They ignore sample counts by design: a weight by self-reported size would let one attacker dominate.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator, stack_deltas
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext, RunPlan


class FedMedian(Aggregator):
    """``W <- W + median_k delta_k`` per coordinate (the mean of the two middle values when even)."""

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> torch.Tensor:
        ordered = stack_deltas(updates).sort(dim=0).values
        n = ordered.shape[0]
        median = ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])
        return global_vector + median


class TrimmedMeanParams(ComponentParams):
    beta: float = Field(0.1, ge=0, lt=0.5, description="Fraction cut from each end per coordinate.")


class TrimmedMean(Aggregator):
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest values and average the rest."""

    Params = TrimmedMeanParams

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> torch.Tensor:
        ordered = stack_deltas(updates).sort(dim=0).values
        cut = int(math.floor(self.params.beta * ordered.shape[0]))
        return global_vector + ordered[cut : ordered.shape[0] - cut].mean(dim=0)


class KrumParams(ComponentParams):
    byzantine: int = Field(0, ge=0, description="f: how many agents may be Byzantine.")


def check_krum_cohort(byzantine: int, plan: RunPlan) -> None:
    """Krum's guarantee needs ``n > 2f + 2`` updates a round (Blanchard et al. 2017): refuse, before
    round 1, a ``byzantine`` the sampler's cohort cannot meet."""
    if plan.cohort is not None and plan.cohort <= 2 * byzantine + 2:
        raise ValueError(f"'byzantine' = {byzantine} is too large for the at most {plan.cohort} agents the sampler "
                         f"selects a round: Krum needs n > 2f + 2, so 'byzantine' <= {max((plan.cohort - 3) // 2, 0)} "
                         "or a larger cohort")


def krum_scores(deltas: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Each update's sum of squared distances to its ``n - f - 2`` nearest other updates."""
    n = deltas.shape[0]
    neighbours = n - byzantine - 2
    if neighbours < 1:
        raise ValueError(
            f"Krum needs n - f - 2 >= 1 updates, got n={n}, f={byzantine}: sample more agents or lower 'byzantine'"
        )
    squared = torch.cdist(deltas.double(), deltas.double()).pow(2)
    squared.fill_diagonal_(float("inf"))
    return squared.sort(dim=1).values[:, :neighbours].sum(dim=1)


class Krum(Aggregator):
    """``W <- W + delta_{k*}`` where ``k*`` has the lowest Krum score."""

    Params = KrumParams

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> Aggregate:
        deltas = stack_deltas(updates)
        best = int(krum_scores(deltas, self.params.byzantine).argmin())
        return Aggregate(global_vector + deltas[best], kept={updates[best].agent_id: 1.0})

    def check_run(self, plan: RunPlan) -> None:
        check_krum_cohort(self.params.byzantine, plan)


class MultiKrumParams(KrumParams):
    m: int | None = Field(None, gt=0, description="How many updates to average; default n - f.")


class MultiKrum(Aggregator):
    """``W <- W + mean of the m updates with the lowest Krum scores`` (scores computed once)."""

    Params = MultiKrumParams

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> Aggregate:
        deltas = stack_deltas(updates)
        scores = krum_scores(deltas, self.params.byzantine)
        m = min(self.params.m or deltas.shape[0] - self.params.byzantine, deltas.shape[0])
        chosen = scores.argsort()[:m]
        return Aggregate(global_vector + deltas[chosen].mean(dim=0),
                         kept={updates[i].agent_id: 1.0 / m for i in chosen.tolist()})

    def check_run(self, plan: RunPlan) -> None:
        check_krum_cohort(self.params.byzantine, plan)
