"""FedAvg and its close relatives: FedSGD and FedAvgM."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.aggregation import MeanAggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, RoundContext


class FedAvgParams(ComponentParams):
    weighted: bool = Field(True, description="Weight agents by sample count (n_k / n); else uniformly.")
    server_lr: float = Field(1.0, gt=0, description="Server step size applied to the mean update.")


class FedAvg(MeanAggregator):
    """``W <- W + server_lr * sum_k w_k delta_k`` with ``w_k = n_k / n`` (the paper's equation 2)."""

    Params = FedAvgParams

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> torch.Tensor:
        return global_vector + self.params.server_lr * self.mean_delta(updates)


class FedSGD(FedAvg):
    """Each agent takes one full-batch gradient step; the server averages the steps.

    With one local step of size ``lr`` the mean update is ``-lr`` times the sample-weighted mean
    gradient, which is exactly the full-batch gradient over the union of the agents' data.
    """

    def configure_training(self, training: Any) -> Any:
        return training.model_copy(update={"epochs": 1, "batch_size": None, "max_steps": 1})


class FedAvgMParams(FedAvgParams):
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum beta.")


class FedAvgM(MeanAggregator):
    """Server momentum: ``v <- beta v + mean_delta``; ``W <- W + server_lr * v``."""

    Params = FedAvgMParams

    def __init__(self, params: FedAvgMParams) -> None:
        super().__init__(params)
        self.velocity: torch.Tensor | None = None

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> torch.Tensor:
        delta = self.mean_delta(updates)
        if self.velocity is None:
            self.velocity = torch.zeros_like(delta)
        self.velocity = self.params.momentum * self.velocity + delta
        return global_vector + self.params.server_lr * self.velocity

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state["velocity"]
