"""q-FFL's agent side (Li et al. 2020): report the global model's loss on the agent's data."""

from __future__ import annotations

from flcore.agent_plugin import AgentPlugin
from flcore.protocol import AgentContext

LOSS = "qffl_loss/loss"  # what each agent sends: F_k, its loss at the round's global model


class QFFLLoss(AgentPlugin):
    """Before training, scores the global weights on the agent's whole shard (the configured loss,
    eval mode) and sends it to the server as ``qffl_loss/loss``; local training is unchanged."""

    not_vectorizable_because = "it scores the global model on each agent's shard through agent.score, which the vectorized backend does not offer"

    def on_agent_start(self, agent: AgentContext) -> None:
        if agent.score is None:
            raise RuntimeError("qffl_loss needs agent.score, which this backend does not offer")
        agent.send(self, "loss", agent.score()["loss"])
