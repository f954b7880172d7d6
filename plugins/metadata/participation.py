"""Participation metadata: what samplers such as power-of-choice or fairness-aware ones read."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flcore.agents import AgentField
from flcore.metadata import AgentMetadata
from flcore.protocol import AgentResult, RoundContext


class Participation(AgentMetadata):
    """``times_selected``, ``last_round`` (-1 until selected) and ``last_loss`` (NaN until trained)."""

    def state_fields(self) -> Sequence[AgentField]:
        return (
            AgentField("times_selected", 0, "int64", "How many accepted updates the agent has sent."),
            AgentField("last_round", -1, "int64", "The last round (1-based) the agent's update was accepted."),
            AgentField("last_loss", float("nan"), "float32", "The agent's mean local loss in that round."),
        )

    def on_round_end(self, context: RoundContext, accepted: Sequence[AgentResult]) -> None:
        if not accepted:
            return
        population = context.population
        ids = np.array([u.agent_id for u in accepted], dtype=np.int64)
        population.update("times_selected", ids, population.column("times_selected")[ids] + 1)
        population.update("last_round", ids, context.index + 1)
        population.update("last_loss", ids, [u.metrics.get("loss", float("nan")) for u in accepted])
