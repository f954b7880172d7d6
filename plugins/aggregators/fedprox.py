"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term in local training."""

from __future__ import annotations

from typing import Sequence

from flcore_plugins.aggregators.fedavg import FedAvg, FedAvgParams
from pydantic import Field

from flcore.protocol import Requirement


class FedProxParams(FedAvgParams):
    mu: float = Field(0.01, ge=0, description="Weight of the proximal term mu/2 * ||w - w_global||^2.")


class FedProx(FedAvg):
    """FedAvg on the server; requires the ``proximal`` agent-side plugin with the same ``mu``, so
    that each agent minimises ``loss + mu/2 * ||w - w_global||^2``."""

    Params = FedProxParams

    @classmethod
    def requirements(cls, params: FedProxParams) -> Sequence[Requirement]:
        return (Requirement("agent_plugin", "flcore:proximal", {"mu": params.mu}),)
