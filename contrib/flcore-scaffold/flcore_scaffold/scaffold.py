"""SCAFFOLD (Karimireddy et al., ICML 2020): a server strategy and an agent-side plugin.

The server control variate ``c`` is the strategy's state and reaches agents in their instructions;
each agent's ``c_i`` is per-agent state of the agent-side plugin, so it persists across rounds, is
checkpointed with the run and travels through every backend, the distributed one included.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.aggregation import Aggregator, weighted_mean_delta
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, Instruction, Requirement, RoundContext, split_like

FIELD = "scaffold_c"
SERVER_C = "scaffold/c"  # the instruction key carrying c
DELTA_C = "scaffold_correction/delta_c"  # what each agent sends back: c_i+ - c_i


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
        return (Requirement("agent_plugin", "flcore-scaffold:scaffold_correction"),)

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        if self.c is None:
            self.c = torch.zeros_like(context.global_vector)
        for instruction in instructions:
            instruction.extra[SERVER_C] = self.c

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
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


class ScaffoldCorrection(AgentPlugin):
    """Each step ``g <- g + c - c_i``; after ``K`` steps at rate ``lr``, option II of the paper:
    ``c_i+ = c_i - c + (x - y_i) / (K lr)``."""

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "SCAFFOLD client control variate c_i (flat vector)"),)

    def on_agent_start(self, agent: AgentContext) -> None:
        c = agent.instruction.extra.get(SERVER_C)
        if c is None:
            raise RuntimeError("scaffold_correction needs the 'scaffold' strategy, which sends c to the agents")
        c_i = agent.state[FIELD]
        self._c = c.to(agent.params[0].device)
        self._c_i = torch.zeros_like(self._c) if c_i is None else c_i.to(self._c.device)
        self._correction = split_like(self._c - self._c_i, agent.params)

    def before_step(self, agent: AgentContext) -> None:
        for p, correction in zip(agent.params, self._correction):
            if p.grad is not None:
                p.grad.add_(correction)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        steps = max(agent.steps, 1)
        c_i_new = self._c_i - self._c - result.delta / (steps * agent.lr)
        agent.state[FIELD] = c_i_new.detach().cpu()
        agent.send(self, "delta_c", (c_i_new - self._c_i).detach().cpu())
