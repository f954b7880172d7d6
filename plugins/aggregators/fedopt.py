"""Adaptive server optimizers: FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021, Algorithm 2).

The mean update ``delta`` is the pseudo-gradient's negative. With ``m_0 = 0`` and ``v_0 = tau^2``:

- ``m <- beta1 m + (1 - beta1) delta``
- Adagrad: ``v <- v + delta^2``; Adam: ``v <- beta2 v + (1 - beta2) delta^2``;
  Yogi: ``v <- v - (1 - beta2) delta^2 sign(v - delta^2)``
- ``W <- W + server_lr * m / (sqrt(v) + tau)``
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.aggregation import MeanAggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, RoundContext


class FedOptParams(ComponentParams):
    server_lr: float = Field(0.01, gt=0, description="Server learning rate eta.")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="Adaptivity: the denominator's epsilon and sqrt(v_0).")
    weighted: bool = Field(True, description="Weight agents by sample count.")


class _FedOpt(MeanAggregator):
    Params = FedOptParams

    def __init__(self, params: FedOptParams) -> None:
        super().__init__(params)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext) -> torch.Tensor:
        p = self.params
        delta = self.mean_delta(updates)
        if self.m is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, p.tau**2)
        self.m = p.beta1 * self.m + (1 - p.beta1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        return global_vector + p.server_lr * self.m / (self.v.sqrt() + p.tau)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m, self.v = state["m"], state["v"]


class FedAdam(_FedOpt):
    """Adam on the server."""

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return self.params.beta2 * v + (1 - self.params.beta2) * delta_sq


class FedYogi(_FedOpt):
    """Yogi on the server: additive, sign-controlled second moment."""

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v - (1 - self.params.beta2) * delta_sq * torch.sign(v - delta_sq)


class FedAdagrad(_FedOpt):
    """Adagrad on the server (``beta2`` is unused)."""

    def _second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v + delta_sq
