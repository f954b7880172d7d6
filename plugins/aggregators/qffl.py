"""q-FFL (Li et al., ICLR 2020, "Fair Resource Allocation in Federated Learning"): q-FedAvg,
Algorithm 2 of the paper. Agents with a higher loss at the global model weigh more as ``q`` grows."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, Requirement, RoundContext

LOSS = "qffl_loss/loss"
EPSILON = 1e-10  # added to F_k, as the paper's code does, so that F_k^(q-1) is finite at F_k = 0


class QFFLParams(ComponentParams):
    q: float = Field(
        1.0,
        ge=0,
        description="Fairness parameter q >= 0; 0 is uniform FedAvg, larger favours "
        "the agents the global model serves worst.",
    )


class QFFL(Aggregator):
    """With ``L = 1/lr`` (the round's local learning rate), ``Delta_k = L (w - w_k)``,
    ``h_k = q F_k^(q-1) ||Delta_k||^2 + L F_k^q`` and ``w <- w - sum_k F_k^q Delta_k / sum_k h_k``,
    ``F_k`` being agent k's loss at ``w`` before it trains (sent by the ``qffl_loss`` plugin).

    Streams: a round keeps ``sum F^q delta``, ``sum F^(q-1) ||delta||^2`` and ``sum F^q``.
    """

    Params = QFFLParams
    streaming = True

    def __init__(self, params: QFFLParams) -> None:
        super().__init__(params)
        self._reset()

    def _reset(self) -> None:
        self._weighted: torch.Tensor | None = None  # sum_k F_k^q delta_k
        self._norms = 0.0  # sum_k F_k^(q-1) ||delta_k||^2
        self._powers = 0.0  # sum_k F_k^q
        self._losses: list[float] = []

    @classmethod
    def requirements(cls, params: QFFLParams) -> Sequence[Requirement]:
        return (Requirement("agent_plugin", "flcore:qffl_loss"),)

    def accumulate(self, update: AgentResult) -> None:
        if LOSS not in update.extra:
            raise RuntimeError(f"agent {update.agent_id}'s result lacks '{LOSS}': q-FFL needs the qffl_loss plugin")
        q, loss = self.params.q, float(update.extra[LOSS])
        power = (loss + EPSILON) ** q
        delta = update.delta.double()
        self._weighted = delta * power if self._weighted is None else self._weighted.add_(delta, alpha=power)
        self._norms += (q * (loss + EPSILON) ** (q - 1) if q else 0.0) * float(delta.square().sum())
        self._powers += power
        self._losses.append(loss)

    def aggregate(
        self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
    ) -> Aggregate:
        if self._weighted is None:  # called directly, with the deltas
            for update in updates:
                self.accumulate(update)
        lipschitz = 1.0 / context.lr
        # sum F^q Delta = -L sum F^q delta;  sum h = q L^2 sum F^(q-1) ||delta||^2 + L sum F^q
        denominator = lipschitz**2 * self._norms + lipschitz * self._powers
        step = (lipschitz / denominator) * self._weighted
        losses = self._losses
        self._reset()
        new = global_vector + step.to(global_vector)
        return Aggregate(new, {"mean_loss": sum(losses) / len(losses), "max_loss": max(losses)})
