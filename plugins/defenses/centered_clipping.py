"""Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from History for Byzantine
Robust Optimization"): clip each update's distance to a center, the previous round's aggregate.

``v <- v + (1/n) sum_i (delta_i - v) min(1, tau / ||delta_i - v||)``, ``l`` times per round, starting
from the last round's ``v`` (zero in round 1); then ``W <- W + v``. The center is the strategy's
server state (the paper's momentum: the history an attacker cannot move by more than ``f tau / n`` a
round), checkpointed with the run.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator, stack_deltas
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext


class CenteredClippingParams(ComponentParams):
    tau: float = Field(1.0, gt=0, description="tau: the clipping radius around the center.")
    iterations: int = Field(1, gt=0, description="l: clipping iterations per round.")


def centered_clip(deltas: torch.Tensor, center: torch.Tensor, tau: float, iterations: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped center after ``iterations``, and the last iteration's per-update factors."""
    factors = torch.ones(deltas.shape[0], dtype=deltas.dtype, device=deltas.device)
    for _ in range(iterations):
        offsets = deltas - center
        factors = torch.clamp(tau / offsets.norm(dim=1), max=1.0)  # a zero offset gives inf, clamped to 1
        center = center + (offsets * factors.unsqueeze(1)).mean(dim=0)
    return center, factors


class CenteredClipping(Aggregator):
    """Unweighted by design, like the other robust strategies; ``kept`` holds each update's share of
    the clipping factors (an update far from the center counts less)."""

    Params = CenteredClippingParams

    def __init__(self, params: CenteredClippingParams) -> None:
        super().__init__(params)
        self.center: torch.Tensor | None = None

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> Aggregate:
        deltas = stack_deltas(updates)
        start = torch.zeros_like(global_vector) if self.center is None else self.center.to(global_vector)
        self.center, factors = centered_clip(deltas, start, self.params.tau, self.params.iterations)
        shares = (factors / factors.sum()).tolist()
        return Aggregate(global_vector + self.center, {"clipped_share": float((factors < 1).double().mean())},
                         kept={u.agent_id: share for u, share in zip(updates, shares)})

    def state_dict(self) -> dict[str, Any]:
        return {"center": None if self.center is None else self.center.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.center = state["center"]
