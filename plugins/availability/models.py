"""Availability without a trace: always, Bernoulli per round, and a diurnal cycle."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import Field, model_validator

from flcore.agents import AgentField, AgentPopulation
from flcore.availability import Availability
from flcore.params import ComponentParams
from flcore.protocol import RoundContext


class Always(Availability):
    """Every agent, every round: the default, which costs nothing."""

    def online(self, context: RoundContext) -> np.ndarray | None:
        return None

    def availability(self, context: RoundContext, available: np.ndarray | None) -> np.ndarray | None:
        return available


class BernoulliParams(ComponentParams):
    p: float = Field(0.5, gt=0, le=1, description="Probability that an agent is online in a round, "
                     "independently of other agents and rounds.")


class Bernoulli(Availability):
    """Each agent is online with probability ``p``, drawn afresh every round for the whole population
    from this component's stream (so the draw does not depend on what other components do)."""

    Params = BernoulliParams

    def online(self, context: RoundContext) -> np.ndarray | None:
        draws = context.rng(self).random(len(context.population))
        return np.flatnonzero(draws < self.params.p)


class DiurnalParams(ComponentParams):
    period: float = Field(86400.0, gt=0, description="Length of the cycle in virtual seconds (a day).")
    low: float = Field(0.05, ge=0, le=1, description="Online probability at an agent's quietest time.")
    high: float = Field(0.6, ge=0, le=1, description="Online probability at an agent's busiest time.")
    spread: float = Field(1.0, ge=0, le=1, description="Agents' phases are uniform over this share of the "
                          "cycle (time zones): 0 puts everyone in one phase, 1 spreads them over the whole cycle.")

    @model_validator(mode="after")
    def _ordered(self) -> DiurnalParams:
        if self.low > self.high:
            raise ValueError(f"low = {self.low} is above high = {self.high}; expected low <= high")
        return self


class Diurnal(Availability):
    """``p_a(t) = low + (high - low) * (1 + cos(2 pi (t / period - phase_a))) / 2`` at virtual time
    ``t``; each agent is online with its ``p_a(t)``, drawn every round. The phases are drawn once in
    ``setup`` and kept in the agent field ``diurnal_phase`` (a share of the cycle)."""

    Params = DiurnalParams

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField("diurnal_phase", 0.0, "float64", "The agent's busiest time, as a share of the cycle."),)

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        phases = rng.random(len(population)) * self.params.spread
        population.update("diurnal_phase", np.arange(len(population)), phases)

    def probability(self, population: AgentPopulation, time: float) -> np.ndarray:
        """Every agent's online probability at virtual time ``time``."""
        params = self.params
        phase = population.column("diurnal_phase")
        wave = (1.0 + np.cos(2.0 * np.pi * (time / params.period - phase))) / 2.0
        return params.low + (params.high - params.low) * wave

    def online(self, context: RoundContext) -> np.ndarray | None:
        chance = self.probability(context.population, context.clock)
        return np.flatnonzero(context.rng(self).random(len(chance)) < chance)
