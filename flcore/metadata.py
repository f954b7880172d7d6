"""The agent-metadata interface: per-agent fields a run keeps across rounds.

A metadata component declares fields (:meth:`~flcore.protocol.RoundComponent.state_fields`) and
updates them after each round in :meth:`~flcore.protocol.RoundComponent.on_round_end`. A run enables
the components its config lists under ``federation.agent_metadata`` and those its other components
require (power-of-choice requires ``participation``), not every installed one.
"""

from __future__ import annotations

from flcore.protocol import RoundComponent


class AgentMetadata(RoundComponent):
    """Declares per-agent fields and keeps them current."""
