"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018): Krum chooses a selection set, then each
coordinate is averaged over the values closest to its median.

With ``n`` updates of which at most ``f`` are Byzantine (``n >= 4f + 3``):

1. selection: ``theta = n - 2f`` times, Krum picks the update with the lowest score among those
   not yet picked. Each score sums the squared distances to the ``n - f - 2`` nearest others among
   the ``m`` remaining (Krum's count for the round), or to all ``m - 1`` once fewer remain. The
   paper applies Krum to each shrinking set without saying how; Krum's own ``m - f - 2`` would fall
   to a single neighbour in the last steps, where two identical Byzantine updates vouch for each
   other and get selected;
2. aggregation: per coordinate, the ``beta = theta - 2f`` selected values closest to the selected
   values' median (the mean of the two middle ones for an even count), averaged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator, stack_deltas
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext, RunPlan


class BulyanParams(ComponentParams):
    byzantine: int = Field(0, ge=0, description="f: how many updates may be Byzantine; Bulyan needs n >= 4f + 3.")


def selection_set(deltas: torch.Tensor, byzantine: int) -> list[int]:
    """Bulyan's step 1: the rows Krum picks one at a time, ``n - 2f`` of them, in picking order."""
    n = deltas.shape[0]
    squared = torch.cdist(deltas.double(), deltas.double()).pow(2)
    squared.fill_diagonal_(float("inf"))
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * byzantine):
        among = squared[remaining][:, remaining]
        neighbours = max(min(n - byzantine - 2, len(remaining) - 1), 1)
        scores = among.sort(dim=1).values[:, :neighbours].sum(dim=1)
        chosen.append(remaining.pop(int(scores.argmin())))
    return chosen


def closest_to_median_mean(selected: torch.Tensor, beta: int) -> torch.Tensor:
    """Bulyan's step 2: per coordinate, the mean of the ``beta`` values nearest the median."""
    ordered = selected.sort(dim=0).values
    k = ordered.shape[0]
    median = ordered[k // 2] if k % 2 else 0.5 * (ordered[k // 2 - 1] + ordered[k // 2])
    nearest = (selected - median).abs().argsort(dim=0, stable=True)[:beta]
    return selected.gather(0, nearest).mean(dim=0)


class Bulyan(Aggregator):
    """Bulyan over Krum; reports its selection set as ``kept`` (each at ``1 / theta``)."""

    Params = BulyanParams

    def check_run(self, plan: RunPlan) -> None:
        f = self.params.byzantine
        if plan.cohort is not None and plan.cohort < 4 * f + 3:
            raise ValueError(f"'byzantine' = {f} is too large for the at most {plan.cohort} agents the sampler "
                             f"selects a round: Bulyan needs n >= 4f + 3, so 'byzantine' <= "
                             f"{max((plan.cohort - 3) // 4, 0)} or a larger cohort")

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> Aggregate:
        f, n = self.params.byzantine, len(updates)
        if n < 4 * f + 3:
            raise ValueError(f"Bulyan needs n >= 4f + 3 updates, got n={n}, f={f} in round {context.index + 1}: "
                             "sample more agents or lower 'byzantine'")
        deltas = stack_deltas(updates)
        chosen = selection_set(deltas, f)
        theta = len(chosen)
        vector = global_vector + closest_to_median_mean(deltas[chosen], theta - 2 * f)
        return Aggregate(vector, kept={updates[i].agent_id: 1.0 / theta for i in chosen})
