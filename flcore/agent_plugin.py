"""Agent-side plugins: behaviour inside one agent's local training.

The per-agent lifecycle, in order, for every agent a backend trains:

1. :meth:`AgentPlugin.on_agent_start` once, with the global weights loaded;
2. per epoch, the batches: a shuffled pass in batches of ``training.batch_size``, unless a plugin
   supplies them with :meth:`AgentPlugin.epoch_batches` (DP-SGD's Poisson-sampled batches);
3. per batch: :meth:`AgentPlugin.transform_batch` (data poisoning, augmentation), then the loss plus
   every plugin's :meth:`AgentPlugin.loss_term` (FedProx's proximal term) and backward, unless a
   plugin computes the gradient itself with :meth:`AgentPlugin.compute_gradients` (DP-SGD's
   clipped, noised per-sample gradients; the loss terms' gradients are added after it), then
   :meth:`AgentPlugin.before_step` (SCAFFOLD's gradient correction), then the optimizer step;
4. :meth:`AgentPlugin.on_update` once, with the finished update (clip it, attack it, compress it).

At most one plugin of a run may implement :meth:`~AgentPlugin.epoch_batches`, and at most one
:meth:`~AgentPlugin.compute_gradients`; the engine calls either only where a plugin implements it,
so the plain loop is unchanged otherwise.

Separately, before an agent is scored on its held-out split (``evaluation.per_agent_every``),
:meth:`AgentPlugin.personalize` turns the global weights into the model that agent would use: a
personal head loaded from its state (FedPer), its own model (Ditto), a few steps of fine-tuning.

Plugins compose as an ordered list (``federation.agent_plugins``); a strategy's required plugins come
first. Per-agent state is declared with :meth:`~flcore.protocol.RoundComponent.state_fields` and read
and written through ``agent.state``; values for the server go through ``agent.send``. Both travel in
the agent's :class:`~flcore.protocol.AgentResult`, so every backend carries them, the distributed one
included. Server-side phases (``configure_round``, ``on_results``, ...) are available too: an attack
chooses its malicious agents in ``setup`` and colluding attackers read the round's honest updates in
``on_results``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Iterable

from flcore.protocol import AgentContext, AgentResult, RoundComponent

if TYPE_CHECKING:
    import torch


class AgentPlugin(RoundComponent):
    """Base of agent-side plugins; override the lifecycle steps you need.

    ``vectorizable = True`` declares that the plugin runs under the vectorized backend: its
    :meth:`loss_term` is a pure function of the parameters (no reads of ``p.grad``, no in-place
    edits), it does not override :meth:`before_step`, and if it overrides
    :meth:`compute_gradients` it also implements :meth:`vectorized_gradients`, that method's form
    for a stack of agents. The vectorized backend calls :meth:`loss_term` inside
    ``torch.func.vmap`` with ``agent=None``, :meth:`vectorized_gradients` once per step for the
    chunk's agents on their per-sample gradients, and the other steps (:meth:`epoch_batches`
    included) once per agent. Backends ask this declaration; they never test which plugin it is.
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

    def epoch_batches(self, agent: AgentContext, n: int, batch_size: int, generator: torch.Generator
                      ) -> Iterable[torch.Tensor]:
        """The batches of one epoch, as positions in ``range(n)`` into the agent's shard (a batch may
        be empty), drawn with ``generator`` (seeded per agent and round); the default, when no plugin
        implements it, is a random permutation cut into batches of ``batch_size``."""
        raise NotImplementedError

    def compute_gradients(self, agent: AgentContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the batch's forward and backward: set ``p.grad`` of every tensor in
        ``agent.params`` (the trainable parameters of ``model``, the bare module) and return the
        batch's per-sample losses and logits, detached, for the epoch's loss and accuracy.
        ``loss(logits, y)`` is the configured loss of each sample. Random draws use torch's global
        generator, which the engine seeds per agent and round."""
        raise NotImplementedError

    def vectorized_gradients(self, agents: list[AgentContext], sample_grads: dict[str, torch.Tensor],
                             weight: torch.Tensor, generators: list[torch.Generator | None]
                             ) -> dict[str, torch.Tensor]:
        """:meth:`compute_gradients` for ``k`` agents at once, on the vectorized backend.

        ``sample_grads[name]`` is ``(k, b, *shape)``: agent ``i``'s gradient of each sample's loss
        (``loss(logits, y)`` of that sample alone) for the trainable parameter ``name``; ``weight``
        ``(k, b)`` is 1 for the samples of agent ``i``'s batch and 0 for padding (batches differ in
        size; a row may be all 0, an empty batch). Draw agent ``i``'s random numbers from
        ``generators[i]``, seeded as torch's global generator is for that agent on the sequential
        backend (so the same draws in the same order give the same numbers); ``None``: agent ``i``
        does not step now, draw nothing for it (its result is ignored). Return each parameter's
        ``(k, *shape)`` gradients, what :meth:`compute_gradients` would set for each agent. The
        backend adds the loss terms' gradients after it, as the sequential trainer does."""
        raise NotImplementedError

    def before_step(self, agent: AgentContext) -> None:
        """After backward, before the optimizer step; may edit ``p.grad`` of ``agent.params``."""

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        """The finished update: edit ``result.delta`` (or its metrics) in place."""

    def personalize(self, agent: AgentContext) -> None:
        """Before the agent's per-agent evaluation, with the global weights loaded into
        ``agent.params`` (and buffers into ``agent.model``): edit them in place into the agent's own
        model (load per-agent state, ``agent.fit`` a few steps). Plugins run in list order, on rank
        0, between rounds; writes to ``agent.state`` are discarded and nothing is sent."""
