"""Participation metadata: what samplers such as power-of-choice or fairness-aware ones read."""

from __future__ import annotations

from typing import Sequence

from flcore.agents import AgentField, AgentMetadata, AgentPopulation
from flcore.aggregation import ClientUpdate


class Participation(AgentMetadata):
    """``times_selected``, ``last_round`` (-1 until selected) and ``last_loss`` (NaN until trained)."""

    def fields(self) -> Sequence[AgentField]:
        return (
            AgentField("times_selected", 0, "int64", "How many accepted updates the agent has sent."),
            AgentField("last_round", -1, "int64", "The last round (1-based) the agent's update was accepted."),
            AgentField("last_loss", float("nan"), "float32", "The agent's mean local loss in that round."),
        )

    def on_round_end(self, population: AgentPopulation, round_index: int, updates: Sequence[ClientUpdate]) -> None:
        for update in updates:
            population.columns["times_selected"][update.agent_id] += 1
            population.columns["last_round"][update.agent_id] = round_index + 1
            population.columns["last_loss"][update.agent_id] = update.metrics.get("loss", float("nan"))
