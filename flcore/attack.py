"""Attacks: an agent-side plugin, the agents it controls, and whether they collude.

An attack subclasses :class:`Attack`, an :class:`~flcore.agent_plugin.AgentPlugin`. Which agents are
malicious is chosen once, in :meth:`Attack.setup`, from the attack's own seeded stream: a share of
the agents, a count, or fixed ids (:class:`AttackParams`). The choice is a declared per-agent field
(``<name>/malicious``), so it is checkpointed, travels through every backend and survives a resume,
and ``records.json`` in the run folder lists it.

Collusion is declared, not inferred (``colluding``):

- a non-colluding attack sees only its own agent: it edits the agent's batches in
  ``transform_batch`` (label flipping, a backdoor trigger) or its finished update in ``on_update``
  (sign flipping, noise, scaling), and only where :meth:`Attack.is_malicious`;
- a colluding attack (ALIE, IPM) sees the round's honest updates in ``on_results``, the phase that
  holds every update of the round, and rewrites the malicious ones (:meth:`Attack.split`).

Every attack logs per round how many malicious updates reached the server
(``<name>/malicious_updates``) and, where the strategy says which updates it used
(:attr:`~flcore.protocol.Aggregate.kept`: Krum, Multi-Krum, Bulyan, FLTrust, ...), the share of the
aggregate the malicious ones carry (``<name>/malicious_kept``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField, AgentPopulation
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, RoundContext, RunPlan, component_name

__all__ = ["Attack", "AttackParams", "DEFAULT_SHARE"]

#: the share of malicious agents when an attack names neither ``share``, ``count`` nor ``ids``
DEFAULT_SHARE = 0.2


class AttackParams(ComponentParams):
    """Which agents the attack controls: one of ``share``, ``count`` or ``ids``."""

    share: float | None = Field(None, ge=0, le=1, description="Share of the agents that are malicious (rounded to "
                                "the nearest count), drawn from the attack's seeded stream; 0.2 when neither "
                                "count nor ids is given.")
    count: int | None = Field(None, ge=0, description="How many agents are malicious, drawn from the attack's "
                              "seeded stream.")
    ids: list[int] | None = Field(None, description="Exactly these agents are malicious.")

    @field_validator("ids")
    @classmethod
    def _distinct_ids(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and (len(set(ids)) != len(ids) or any(i < 0 for i in ids)):
            raise ValueError("agent ids must be distinct and non-negative")
        return ids

    @model_validator(mode="after")
    def _one_choice(self) -> AttackParams:
        given = [name for name in ("share", "count", "ids") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of share, count and ids, not {' and '.join(given)}")
        return self

    def malicious_count(self, agents: int) -> int:
        """How many of ``agents`` this choice makes malicious."""
        if self.ids is not None:
            return len(self.ids)
        if self.count is not None:
            return self.count
        return int(round((DEFAULT_SHARE if self.share is None else self.share) * agents))


class Attack(AgentPlugin):
    """Base of attacks: chooses the malicious agents, records them, and measures what got through.

    Subclasses set ``colluding`` and override the agent-side steps they poison, acting only where
    :meth:`is_malicious`; colluding ones override ``on_results``. Their parameter models subclass
    :class:`AttackParams`.
    """

    Params = AttackParams
    colluding: ClassVar[bool] = False
    vectorizable = True  # attacks edit batches and finished updates, never gradients

    @property
    def field_name(self) -> str:
        """The per-agent field marking this attack's agents."""
        return f"{component_name(self)}/malicious"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(self.field_name, False, "bool", f"Whether {component_name(self)} controls the agent."),)

    def check_run(self, plan: RunPlan) -> None:
        params = self.params
        if params.ids is not None and max(params.ids, default=-1) >= plan.agents:
            outside = sorted(i for i in params.ids if i >= plan.agents)
            raise ValueError(f"'ids' names agents {outside} outside 0..{plan.agents - 1} "
                             f"(federation.agents = {plan.agents})")
        if params.count is not None and params.count > plan.agents:
            raise ValueError(f"'count' = {params.count} malicious agents, but the run has only "
                             f"federation.agents = {plan.agents}")

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        agents = len(population)
        if self.params.ids is not None:
            chosen = np.asarray(self.params.ids, dtype=np.int64)
        else:
            chosen = rng.choice(agents, size=self.params.malicious_count(agents), replace=False)
        chosen = np.sort(chosen)
        population.update(self.field_name, chosen, True)
        self._chosen = chosen.tolist()  # for records.json only: the field above is the state

    def run_record(self) -> dict[str, Any]:
        chosen = getattr(self, "_chosen", [])
        return {"attack": component_name(self), "colluding": self.colluding, "malicious": chosen,
                "count": len(chosen), "params": self.params.model_dump(mode="json")}

    # ---------------------------------------------------------------------------- helpers
    def is_malicious(self, agent: AgentContext) -> bool:
        """Whether the agent training now is one of this attack's."""
        return bool(agent.state[self.field_name])

    def malicious_ids(self, population: AgentPopulation) -> np.ndarray:
        """The ids of this attack's agents, sorted."""
        return np.flatnonzero(population.column(self.field_name))

    def split(self, context: RoundContext, results: Sequence[AgentResult]
              ) -> tuple[list[AgentResult], list[AgentResult]]:
        """The round's accepted results as ``(honest, malicious)``, each in selection order."""
        marked = context.population.column(self.field_name)
        accepted = [r for r in results if r.status.accepted and r.delta is not None]
        return [r for r in accepted if not marked[r.agent_id]], [r for r in accepted if marked[r.agent_id]]

    # ---------------------------------------------------------------------------- metrics
    def on_round_end(self, context: RoundContext, accepted: Sequence[AgentResult]) -> None:
        marked = context.population.column(self.field_name)
        context.log(self, "malicious_updates", sum(bool(marked[u.agent_id]) for u in accepted))
        kept = context.kept
        if kept:
            total = sum(kept.values())
            share = sum(w for agent, w in kept.items() if marked[agent]) / total if total > 0 else 0.0
            context.log(self, "malicious_kept", share)
