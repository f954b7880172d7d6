"""MOON (Li, He and Song, CVPR 2021, "Model-Contrastive Federated Learning"): a contrastive term
pulling each agent's representation toward the global model's and away from its previous local one.

The representation is a layer's output, captured with forward hooks during the training forward pass;
the global and previous models' representations of the same batch come from ``functional_call`` on
the same module under ``no_grad``. The previous local model is per-agent state (a flat vector per
agent that has trained), so it is checkpointed and travels through every backend.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, RunPlan, split_like

FIELD = "moon_previous"


class MoonParams(ComponentParams):
    mu: float = Field(1.0, ge=0, description="Weight mu of the contrastive term (0: plain local training).")
    tau: float = Field(0.5, gt=0, description="Temperature tau of the contrastive term (> 0).")
    layer: str | None = Field(
        None,
        description="The module whose output is the representation (a name from "
        "model.named_modules(), such as 'net.2'); None: the input of the model's last "
        "layer with parameters, the penultimate layer's output.",
    )


def representation_hook(model: torch.nn.Module, layer: str | None) -> tuple[torch.nn.Module, bool]:
    """The module to hook and whether its output (``True``) or its input is the representation."""
    if layer is not None:
        return model.get_submodule(layer), True
    with_params = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    return with_params[-1], False


def contrastive_loss(z: torch.Tensor, z_global: torch.Tensor, z_previous: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i -log(e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}))``,
    ``sim`` the cosine similarity (equation 3 of the paper)."""
    dtype = z.dtype  # under bf16 autocast the local representation is bf16, the no_grad ones are not
    z, z_global, z_previous = (t.flatten(1).to(dtype) for t in (z, z_global, z_previous))
    positive = F.cosine_similarity(z, z_global, dim=1) / tau
    negative = F.cosine_similarity(z, z_previous, dim=1) / tau
    logits = torch.stack([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


class Moon(AgentPlugin):
    """Adds ``mu * l_con`` to every batch loss. An agent that has not trained before has no previous
    model; with the paper's first-round choice (the global model as the previous one) the term is the
    constant log 2, without gradient, so it is left out."""

    Params = MoonParams
    not_vectorizable_because = (
        "its loss term runs the global and previous models on the batch, which the vmapped loss does not receive"
    )

    def __init__(self, params: MoonParams) -> None:
        super().__init__(params)
        self._handles: list[Any] = []
        self._slot: str | None = None
        self._captured: dict[str, torch.Tensor] = {}

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "MOON's previous local model of the agent (flat vector)"),)

    def check_run(self, plan: RunPlan) -> None:
        layer = self.params.layer
        if plan.model is None or layer is None:
            return
        names = [name for name, _ in plan.model.named_modules() if name]
        if layer not in names:
            raise ValueError(f"'layer' = {layer!r} is not a module of the model; its modules are: {', '.join(names)}")

    def on_agent_start(self, agent: AgentContext) -> None:
        self._remove_hooks()
        if agent.model is None:
            raise RuntimeError("moon needs agent.model, which this backend does not offer")
        self._root = getattr(agent.model, "module", agent.model)  # past Fabric's wrapper
        target, output = representation_hook(self._root, self.params.layer)
        self._names = [name for name, p in self._root.named_parameters() if p.requires_grad]
        self._handles = [
            self._root.register_forward_pre_hook(self._keep_input),
            target.register_forward_hook(self._keep_output)
            if output
            else target.register_forward_pre_hook(self._keep_head_input),
        ]
        stored = agent.state[FIELD]
        self._previous = None if stored is None else split_like(stored.to(agent.params[0]), agent.params)
        self._slot = "local"

    def _keep_input(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if self._slot == "local":
            self._x = args[0]

    def _keep_output(self, module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self._slot is not None:
            self._captured[self._slot] = output

    def _keep_head_input(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if self._slot is not None:
            self._captured[self._slot] = args[0]

    @torch.no_grad()
    def _represent(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The representation of ``x`` under other weights (buffers copied: BatchNorm's running
        statistics of the agent's model stay untouched)."""
        weights = {**dict(zip(self._names, params)), **{n: b.clone() for n, b in self._root.named_buffers()}}
        self._slot = "other"
        try:
            torch.func.functional_call(self._root, weights, (x,))
        finally:
            self._slot = "local"
        return self._captured.pop("other")

    def loss_term(
        self, agent: AgentContext | None, params: list[torch.Tensor], global_params: list[torch.Tensor]
    ) -> torch.Tensor | None:
        z = self._captured.pop("local", None)
        if self._previous is None or self.params.mu == 0 or z is None:
            return None
        z_global = self._represent(global_params, self._x)
        z_previous = self._represent(self._previous, self._x)
        return self.params.mu * contrastive_loss(z, z_global, z_previous, self.params.tau)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        self._remove_hooks()
        local = torch.cat([g.reshape(-1) for g in agent.global_params]) + result.delta
        agent.state[FIELD] = local.detach().cpu()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._slot, self._captured, self._x = [], None, {}, None
