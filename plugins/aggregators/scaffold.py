"""SCAFFOLD (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"): the server strategy. The server control variate ``c`` is its state and reaches
agents in their instructions; each agent's ``c_i`` is state of the ``scaffold_correction`` plugin."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from flcore_plugins.agent_plugins.scaffold import DELTA_C, SERVER_C
from pydantic import Field

from flcore.aggregation import Aggregator, weighted_mean_delta
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Instruction, Requirement, RoundContext


class ScaffoldParams(ComponentParams):
    server_lr: float = Field(1.0, gt=0, description="Global step size eta_g.")
    weighted: bool = Field(False, description="Weight the mean update by sample count (the paper: uniform).")


class Scaffold(Aggregator):
    """``x <- x + eta_g mean(y_i - x)`` and ``c <- c + |S|/N mean(c_i+ - c_i)``."""

    Params = ScaffoldParams

    def __init__(self, params: ScaffoldParams) -> None:
        super().__init__(params)
        self.c: torch.Tensor | None = None

    @classmethod
    def requirements(cls, params: ScaffoldParams) -> Sequence[Requirement]:
        return (Requirement("agent_plugin", "flcore:scaffold_correction"),)

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        if self.c is None:
            self.c = torch.zeros_like(context.global_vector)
        for instruction in instructions:
            instruction.extra[SERVER_C] = self.c

    def aggregate(
        self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
    ) -> torch.Tensor:
        new = global_vector + self.params.server_lr * weighted_mean_delta(updates, self.params.weighted)
        if self.c is None:
            self.c = torch.zeros_like(global_vector)
        corrections = [u.extra[DELTA_C] for u in updates if DELTA_C in u.extra]
        if corrections:
            mean_delta_c = torch.stack(corrections).mean(dim=0).to(self.c.device)
            self.c = self.c + (len(corrections) / len(context.population)) * mean_delta_c
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c = state["c"]
