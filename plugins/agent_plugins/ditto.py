"""Ditto (Li, Hu, Beirami and Smith, ICML 2021, "Ditto: Fair and Robust Federated Learning
Through Personalization"): alongside the usual global update, each selected agent trains a
personal model ``v_k`` on ``F_k(v) + lambda/2 ||v - w^t||^2``, ``w^t`` the round's global model.

The global update is untouched (plain local training; any strategy aggregates it). After it, the
personal model (the global one for an agent's first round) is trained for as many steps as the
global update took (or ``personal_steps``) and kept as per-agent state, a flat vector, so it is
checkpointed, resumes exactly and travels through every backend. Per-agent evaluation scores it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, split_like

FIELD = "ditto_personal"


def flatten(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def load_vector(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    for p, value in zip(params, split_like(vector.to(params[0]), params)):
        p.copy_(value)


class DittoParams(ComponentParams):
    lam: float = Field(0.1, ge=0, description="Ditto's lambda: the pull of the personal model toward the global "
                       "one (0: purely local models; large: the global model).")
    personal_steps: int | None = Field(None, gt=0, description="Steps of personal training per round; None: as "
                                       "many as the agent's global update took.")


class Ditto(AgentPlugin):
    """After the global update, ``personal_steps`` steps on ``v`` with the proximal term."""

    Params = DittoParams
    not_vectorizable_because = "it trains a second, personal model per agent through agent.fit"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "Ditto's personal model v_k of the agent (flat vector)"),)

    def _load_personal(self, agent: AgentContext) -> None:
        stored = agent.state[FIELD]
        if stored is not None:
            load_vector(agent.params, stored)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if agent.fit is None:
            raise RuntimeError("ditto needs agent.fit, which this backend does not offer")
        load_vector(agent.params, flatten(agent.global_params))
        self._load_personal(agent)
        lam, anchor = self.params.lam, agent.global_params

        def proximal(params: list[torch.Tensor]) -> torch.Tensor:
            return 0.5 * lam * sum(((p - g) ** 2).sum() for p, g in zip(params, anchor))

        agent.fit(steps=self.params.personal_steps or max(agent.steps, 1), loss_term=proximal if lam else None)
        agent.state[FIELD] = flatten(agent.params).cpu()

    def personalize(self, agent: AgentContext) -> None:
        self._load_personal(agent)
