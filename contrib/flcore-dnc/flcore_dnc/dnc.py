"""Divide-and-Conquer (Shejwalkar and Houmansadr 2021, Algorithm 2): malicious updates must move the
aggregate in some direction, so they stand out along the top singular vector of the centered updates.

Each of ``iterations`` times: draw ``subsample`` coordinates at random (from the strategy's round
stream; all of them when there are fewer), center the updates' restriction to them, take the top right
singular vector ``v``, score each update by ``(centered_i . v)^2``, and keep the ``n - c f`` lowest
scores. The updates kept in every iteration are averaged (uniformly, like the other robust strategies).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pydantic import Field

from flcore.aggregation import Aggregator, stack_deltas
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext, RunPlan


class DnCParams(ComponentParams):
    byzantine: int = Field(0, ge=0, description="f: how many updates may be malicious.")
    iterations: int = Field(5, gt=0, description="How many random coordinate subsets to filter with (the paper: 5).")
    subsample: int = Field(10_000, gt=0, description="b: coordinates per subset (the paper: 10,000).")
    filter_frac: float = Field(1.0, gt=0, description="c: each iteration removes c * f updates (the paper: 1).")


def dnc_keep(deltas: torch.Tensor, removed: int, subsets: Sequence[np.ndarray]) -> list[int]:
    """The rows kept in every subset: each time, all but the ``removed`` highest outlier scores."""
    kept = set(range(deltas.shape[0]))
    for coordinates in subsets:
        sub = deltas[:, torch.from_numpy(coordinates).to(deltas.device)].double()
        centered = sub - sub.mean(dim=0)
        top = torch.linalg.svd(centered, full_matrices=False).Vh[0]
        scores = (centered @ top) ** 2
        kept &= set(scores.argsort(stable=True)[: deltas.shape[0] - removed].tolist())
    return sorted(kept)


class DivideAndConquer(Aggregator):
    """DnC; ``kept`` holds the updates that survived every filter."""

    Params = DnCParams

    def _removed(self) -> int:
        return int(self.params.filter_frac * self.params.byzantine)

    def check_run(self, plan: RunPlan) -> None:
        if plan.cohort is not None and plan.cohort - self._removed() < 1:
            raise ValueError(f"'byzantine' = {self.params.byzantine} with 'filter_frac' = {self.params.filter_frac} "
                             f"removes every one of the at most {plan.cohort} updates a round")

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> Aggregate:
        deltas = stack_deltas(updates)
        dim = deltas.shape[1]
        rng = context.rng(self)
        subsets = [np.arange(dim) if self.params.subsample >= dim
                   else np.sort(rng.choice(dim, size=self.params.subsample, replace=False))
                   for _ in range(self.params.iterations)]
        kept = dnc_keep(deltas, min(self._removed(), len(updates) - 1), subsets)
        return Aggregate(global_vector + deltas[kept].mean(dim=0), {"kept_share": len(kept) / len(updates)},
                         kept={updates[i].agent_id: 1.0 / len(kept) for i in kept})
