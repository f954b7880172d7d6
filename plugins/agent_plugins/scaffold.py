"""SCAFFOLD's agent side (Karimireddy et al., ICML 2020): each step corrected by ``c - c_i``, and
the client control variate ``c_i`` kept as per-agent state, so it persists across rounds, is
checkpointed with the run and travels through every backend, the distributed one included."""

from __future__ import annotations

from typing import Sequence

import torch

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.protocol import AgentContext, AgentResult, split_like

FIELD = "scaffold_c"
SERVER_C = "scaffold/c"  # the instruction key carrying the server's c
DELTA_C = "scaffold_correction/delta_c"  # what each agent sends back: c_i+ - c_i


class ScaffoldCorrection(AgentPlugin):
    """Each step ``g <- g + c - c_i``; after ``K`` steps at rate ``lr``, option II of the paper:
    ``c_i+ = c_i - c + (x - y_i) / (K lr)``."""

    not_vectorizable_because = "it edits gradients in before_step"

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
