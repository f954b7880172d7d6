"""FedExP (Jhunjhunwala, Wang and Joshi, ICLR 2023, "FedExP: Speeding Up Federated Averaging via
Extrapolation"), Algorithm 1: the server step size adapts to how much the agents' updates agree.

With the agents' updates ``d_i = y_i - x`` (the paper's pseudo-gradients are ``-d_i``) and their
uniform mean ``d``, over the ``M`` accepted agents of a round::

    eta_g = max(1, sum_i ||d_i||^2 / (2 M (||d||^2 + epsilon)))
    x    <- x + eta_g d

Updates that point the same way give ``eta_g = 1`` (FedAvg); updates that disagree, whose mean is
short against their own lengths, are extrapolated further.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext


class FedExPParams(ComponentParams):
    epsilon: float = Field(1e-3, gt=0, description="Added to ||mean update||^2 in the step size's denominator.")


class FedExP(Aggregator):
    """FedAvg with equal weights, scaled by ``eta_g >= 1``; logs ``fedexp/server_lr``. Streams: a
    round keeps the sum of the updates and the sum of their squared norms."""

    Params = FedExPParams
    streaming = True

    def __init__(self, params: FedExPParams) -> None:
        super().__init__(params)
        self._sum: torch.Tensor | None = None
        self._squares = 0.0
        self._count = 0

    def accumulate(self, update: AgentResult) -> None:
        delta = update.delta.double()
        self._sum = delta.clone() if self._sum is None else self._sum.add_(delta)
        self._squares += float(delta.square().sum())
        self._count += 1

    def aggregate(
        self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
    ) -> Aggregate:
        if self._sum is None:  # called directly, with the deltas
            for update in updates:
                self.accumulate(update)
        mean, squares, count = self._sum / self._count, self._squares, self._count
        self._sum, self._squares, self._count = None, 0.0, 0
        server_lr = max(1.0, squares / (2 * count * (float(mean.square().sum()) + self.params.epsilon)))
        return Aggregate(global_vector + (server_lr * mean).to(global_vector), {"server_lr": server_lr})
