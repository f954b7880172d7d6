"""SCAFFOLD's aggregator and its per-agent control variates."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.agents import AgentField, AgentMetadata
from flcore.aggregation import Aggregator, ClientUpdate, LocalContext, weighted_mean_delta
from flcore.params import ComponentParams

FIELD = "scaffold_c"


class ControlVariates(AgentMetadata):
    """Declares ``scaffold_c``; the aggregator writes it."""

    def fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "SCAFFOLD client control variate (flat vector)"),)


class ScaffoldParams(ComponentParams):
    server_lr: float = Field(1.0, gt=0, description="Global step size eta_g.")
    weighted: bool = Field(False, description="Weight the mean update by sample count (the paper: uniform).")


class Scaffold(Aggregator):
    """Server control variate ``c`` in the aggregator's state, ``c_i`` in agent metadata."""

    Params = ScaffoldParams

    def __init__(self, params: ScaffoldParams) -> None:
        super().__init__(params)
        self.c: torch.Tensor | None = None
        self._delta_c: list[torch.Tensor] = []
        self._agents = 0
        self._correction: list[torch.Tensor] = []
        self._c_i: torch.Tensor | None = None

    def on_local_start(self, context: LocalContext) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in context.params])
        if self.c is None:
            self.c = torch.zeros_like(flat)
        if FIELD not in context.population.objects:
            raise RuntimeError("SCAFFOLD needs the 'scaffold_control' agent metadata component enabled")
        self._agents = len(context.population)
        c_i = context.population.get(FIELD, context.agent_id)
        self._c_i = torch.zeros_like(flat) if c_i is None else c_i.to(flat.device)
        correction = self.c.to(flat.device) - self._c_i
        self._correction = [chunk.view_as(p) for chunk, p in
                            zip(torch.split(correction, [p.numel() for p in context.params]), context.params)]

    def on_before_step(self, context: LocalContext) -> None:
        for p, correction in zip(context.params, self._correction):
            if p.grad is not None:
                p.grad.add_(correction)

    def on_local_end(self, context: LocalContext, update: ClientUpdate) -> None:
        steps = max(context.steps, 1)
        c_i_new = self._c_i - self.c.to(self._c_i.device) - update.delta / (steps * context.lr)
        self._delta_c.append((c_i_new - self._c_i).detach().cpu())
        context.population.set(FIELD, context.agent_id, c_i_new.detach().cpu())

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[ClientUpdate], round_index: int) -> torch.Tensor:
        new = global_vector + self.params.server_lr * weighted_mean_delta(updates, self.params.weighted)
        if self.c is None:
            self.c = torch.zeros_like(global_vector)
        if self._delta_c:
            mean_delta_c = torch.stack(self._delta_c).mean(dim=0).to(self.c.device)
            self.c = self.c + (len(self._delta_c) / max(self._agents, 1)) * mean_delta_c
        self._delta_c = []
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c = state["c"]
