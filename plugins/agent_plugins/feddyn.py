"""FedDyn's agent side (Acar et al. 2021): a dynamic regularizer aligning each agent's local optimum
with the global one.

Each agent minimises ``L_k(theta) - <g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2``, where
``g_k`` is its own running estimate of ``grad L_k(theta_k^{t-1})``, then updates it as
``g_k <- g_k - alpha (theta_k^t - theta^{t-1})``. ``g_k`` is per-agent state, so it is checkpointed
and travels in the agent's result through every backend.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, split_like

FIELD = "feddyn_grad"


class FedDynRegularizerParams(ComponentParams):
    alpha: float = Field(0.01, gt=0, description="FedDyn's regularization weight alpha (> 0).")


class FedDynRegularizer(AgentPlugin):
    """Adds ``-<g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2`` to every batch loss and keeps
    ``g_k`` per agent (zero before the agent's first round)."""

    Params = FedDynRegularizerParams
    not_vectorizable_because = "its loss term reads each agent's own state g_k, which the vmapped loss does not receive"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "FedDyn's g_k, the agent's estimate of its loss gradient (flat vector)"),)

    def on_agent_start(self, agent: AgentContext) -> None:
        stored = agent.state[FIELD]
        self._grad = None if stored is None else split_like(stored.to(agent.params[0]), agent.params)

    def loss_term(
        self, agent: AgentContext | None, params: list[torch.Tensor], global_params: list[torch.Tensor]
    ) -> torch.Tensor | None:
        squared = sum(((p - g) ** 2).sum() for p, g in zip(params, global_params))
        term = 0.5 * self.params.alpha * squared
        if self._grad is not None:
            term = term - sum((g * p).sum() for g, p in zip(self._grad, params))
        return term

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        stored = agent.state[FIELD]
        step = self.params.alpha * result.delta.detach()
        agent.state[FIELD] = (-step if stored is None else stored.to(step) - step).cpu()
