"""The round-policy interface (``federation.round_policy``): when a round ends on the virtual clock,
and what becomes of agents that are slow, late or still in flight.

A policy takes part in the round protocol's phases like any component, and acts last in each of
them, so that it sees the instructions and results as the other components left them:

- *instruct* (``configure_round``): shorten local work (a straggler's fewer epochs, the steps that
  fit before a deadline), set ``participate = False``, set ``instruction.deadline``;
- *results* (``on_results``): drop late agents, mark partial work, hold updates still in flight on
  the clock (``AgentStatus.DEFERRED``) and add the ones that arrive back into the list;
- and it advances the run's virtual clock, ``context.clock``, by the round's duration, from the
  agents' times (:func:`flcore.devices.result_seconds`).

The engine calls :meth:`RoundPolicy.prepare` once, before any round, with what the policy needs to
predict times: the population, the run's device profile, the training settings and the model's size.
A policy that cannot work there (a deadline no agent can meet) raises ``ValueError`` naming the
parameter, the value and why; the run then exits with code 2 before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flcore.agents import AgentPopulation
from flcore.devices import DeviceProfile
from flcore.protocol import RoundComponent


@dataclass
class PolicySetup:
    """What a round policy is handed before the first round.

    ``model_bytes`` is what an agent downloads (the global model); ``dense_bytes`` what it uploads
    when no compression plugin says otherwise (a dense update).
    """

    population: AgentPopulation
    devices: DeviceProfile
    training: Any
    model_bytes: int
    dense_bytes: int


class RoundPolicy(RoundComponent):
    """Base of round policies."""

    def prepare(self, setup: PolicySetup) -> None:
        """Keep what predicting times needs; raise ``ValueError`` if the policy cannot work here."""
        self.setup_ = setup

    def check_strategy(self, strategy: Any) -> str | None:
        """Why this policy cannot run with ``strategy`` (read its declared capabilities, such as
        ``mean_based``), or ``None``; the run then exits with code 2 before any work."""
        return None
