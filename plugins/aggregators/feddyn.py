"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization"): the
server side, its state ``h`` and the agent-side regularizer it requires."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, Requirement, RoundContext


class FedDynParams(ComponentParams):
    alpha: float = Field(0.01, gt=0, description="FedDyn's regularization weight alpha (> 0), on both sides.")


class FedDyn(Aggregator):
    """``h <- h - alpha/m sum_k (theta_k - theta)`` over the round's accepted agents (``m``: every
    agent of the run), then ``theta <- mean_k theta_k - h/alpha`` (uniform mean, as the paper).

    Streams: a round holds one running sum of the updates, not one vector per agent. Not
    ``mean_based``: the next model also depends on ``h``, which a wrapper cannot account for.
    """

    Params = FedDynParams
    streaming = True

    def __init__(self, params: FedDynParams) -> None:
        super().__init__(params)
        self.h: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0

    @classmethod
    def requirements(cls, params: FedDynParams) -> Sequence[Requirement]:
        return (Requirement("agent_plugin", "flcore:feddyn_regularizer", {"alpha": params.alpha}),)

    def accumulate(self, update: AgentResult) -> None:
        self._sum = update.delta.clone() if self._sum is None else self._sum.add_(update.delta)
        self._count += 1

    def aggregate(
        self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
    ) -> Aggregate:
        if self._sum is None:  # called directly, with the deltas
            for update in updates:
                self.accumulate(update)
        total, count = self._sum.to(global_vector), self._count
        self._sum, self._count = None, 0
        alpha = self.params.alpha
        h = torch.zeros_like(global_vector) if self.h is None else self.h.to(global_vector)
        self.h = h - (alpha / len(context.population)) * total
        new = global_vector + total / count - self.h / alpha
        return Aggregate(new, {"h_norm": float(self.h.norm())})

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = state["h"]
