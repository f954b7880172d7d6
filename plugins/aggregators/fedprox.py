"""FedProx: local training with a proximal term toward the global weights (Li et al. 2020)."""

from __future__ import annotations

import torch
from flcore_plugins.aggregators.fedavg import FedAvg, FedAvgParams
from pydantic import Field

from flcore.aggregation import LocalContext


class FedProxParams(FedAvgParams):
    mu: float = Field(0.01, ge=0, description="Weight of the proximal term mu/2 * ||w - w_global||^2.")


class FedProx(FedAvg):
    """FedAvg on the server; each agent minimises ``loss + mu/2 * ||w - w_global||^2``."""

    Params = FedProxParams

    def local_penalty(self, context: LocalContext) -> torch.Tensor | None:
        if self.params.mu == 0:
            return None
        squared = sum(((p - g) ** 2).sum() for p, g in zip(context.params, context.global_params))
        return 0.5 * self.params.mu * squared
