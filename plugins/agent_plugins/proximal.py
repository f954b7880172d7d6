"""The proximal term of FedProx (Li et al. 2020): local steps are pulled toward the global model."""

from __future__ import annotations

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.params import ComponentParams
from flcore.protocol import AgentContext


class ProximalParams(ComponentParams):
    mu: float = Field(0.01, ge=0, description="Weight of the proximal term mu/2 * ||w - w_global||^2.")


class Proximal(AgentPlugin):
    """Adds ``mu/2 * ||w - w_global||^2`` to every batch loss; a pure function of the parameters, so
    the vectorized backend runs it too."""

    Params = ProximalParams
    vectorizable = True

    def loss_term(self, agent: AgentContext | None, params: list[torch.Tensor],
                  global_params: list[torch.Tensor]) -> torch.Tensor | None:
        if self.params.mu == 0:
            return None
        squared = sum(((p - g) ** 2).sum() for p, g in zip(params, global_params))
        return 0.5 * self.params.mu * squared
