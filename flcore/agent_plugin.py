"""Agent-side plugins: behaviour inside one agent's local training.

The per-agent lifecycle, in order, for every agent a backend trains:

1. :meth:`AgentPlugin.on_agent_start` once, with the global weights loaded;
2. per batch: :meth:`AgentPlugin.transform_batch` (data poisoning, augmentation), then the loss plus
   every plugin's :meth:`AgentPlugin.loss_term` (FedProx's proximal term), backward, then
   :meth:`AgentPlugin.before_step` (SCAFFOLD's gradient correction), then the optimizer step;
3. :meth:`AgentPlugin.on_update` once, with the finished update (clip it, attack it, compress it).

Plugins compose as an ordered list (``federation.agent_plugins``); a strategy's required plugins come
first. Per-agent state is declared with :meth:`~flcore.protocol.RoundComponent.state_fields` and read
and written through ``agent.state``; values for the server go through ``agent.send``. Both travel in
the agent's :class:`~flcore.protocol.AgentResult`, so every backend carries them, the distributed one
included. Server-side phases (``configure_round``, ``on_results``, ...) are available too: an attack
chooses its malicious agents in ``setup`` and colluding attackers read the round's honest updates in
``on_results``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from flcore.protocol import AgentContext, AgentResult, RoundComponent

if TYPE_CHECKING:
    import torch


class AgentPlugin(RoundComponent):
    """Base of agent-side plugins; override the lifecycle steps you need.

    ``vectorizable = True`` declares that the plugin runs under the vectorized backend: its
    :meth:`loss_term` is a pure function of the parameters (no reads of ``p.grad``, no in-place
    edits) and it does not override :meth:`before_step`. The vectorized backend calls
    :meth:`loss_term` inside ``torch.func.vmap`` with ``agent=None``, and the other steps once per
    agent. Backends ask this declaration; they never test which plugin it is.
    ``not_vectorizable_because`` says why a plugin is not, for the backend's refusal (FedDyn's
    loss term reads per-agent state, which the vmapped loss does not receive).
    """

    vectorizable: ClassVar[bool] = False
    not_vectorizable_because: ClassVar[str] = ""

    def on_agent_start(self, agent: AgentContext) -> None:
        """Before the agent's first step, with the global weights loaded into ``agent.params``."""

    def transform_batch(self, agent: AgentContext, x: torch.Tensor, y: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Change a batch before the forward pass (same shapes): label flipping, a backdoor trigger."""
        return x, y

    def loss_term(self, agent: AgentContext | None, params: list[torch.Tensor],
                  global_params: list[torch.Tensor]) -> torch.Tensor | None:
        """A term added to the batch loss; ``params`` and ``global_params`` are the trainable
        parameters and the round's global values, shaped alike."""
        return None

    def before_step(self, agent: AgentContext) -> None:
        """After backward, before the optimizer step; may edit ``p.grad`` of ``agent.params``."""

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        """The finished update: edit ``result.delta`` (or its metrics) in place."""
