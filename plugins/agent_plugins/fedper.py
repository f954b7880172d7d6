"""A personal head per agent: FedPer (Arivazhagan et al. 2019, "Federated Learning with
Personalization Layers") and FedRep (Collins et al. 2021, "Exploiting Shared Representations for
Personalized Federated Learning").

The model's body is shared and aggregated as usual; the head (the modules named in ``head``) is
each agent's own. At an agent's start its head is loaded from per-agent state (an agent that has
not trained yet starts from the global model's head, the initial one); after training, the head is
stored back and its coordinates of the update are set to zero, so the strategy never averages heads
and the global head stays the initial one. FedPer trains body and head together; FedRep first
trains the head alone for ``head_epochs`` epochs, then the body alone for the round's epochs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, RunPlan


class FedPerParams(ComponentParams):
    head: list[str] = Field(min_length=1, description="The modules that stay personal (names from "
                            "model.named_modules(), such as 'net.3', the last layer of mlp with hidden: [64]; "
                            "a wrong name lists them all).")


class FedRepParams(FedPerParams):
    head_epochs: int = Field(1, gt=0, description="Epochs of head-only training before the body's epochs.")


def check_modules(model: torch.nn.Module | None, names: Sequence[str], field: str) -> None:
    """Every name is a module of ``model`` holding trainable parameters, or a ``ValueError`` naming it."""
    if model is None:
        return
    modules = dict(model.named_modules())
    known = ", ".join(name for name in modules if name)
    for name in names:
        if name not in modules or not name:
            raise ValueError(f"'{field}' names {name!r}, which is not a module of the model; its modules are: {known}")
        if not any(p.requires_grad for p in modules[name].parameters()):
            raise ValueError(f"'{field}' names {name!r}, which has no trainable parameters")


class PersonalParts:
    """Which entries of ``agent.params`` (and which coordinates of the flat update) a set of
    modules own (``owned``: the ids of their parameter tensors)."""

    def __init__(self, params: list[torch.Tensor], owned: set[int]) -> None:
        self.index = [i for i, p in enumerate(params) if id(p) in owned]
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        self.slices = [slice(offsets[i], offsets[i + 1]) for i in self.index]

    def values(self, params: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[i].detach().reshape(-1) for i in self.index]).cpu()

    @torch.no_grad()
    def load(self, params: list[torch.Tensor], flat: torch.Tensor) -> None:
        offset = 0
        for i in self.index:
            n = params[i].numel()
            params[i].copy_(flat[offset : offset + n].view_as(params[i]).to(params[i]))
            offset += n

    def zero(self, delta: torch.Tensor) -> None:
        for part in self.slices:
            delta[part] = 0


def root_module(agent: AgentContext) -> torch.nn.Module:
    if agent.model is None:
        raise RuntimeError("a personal head needs agent.model, which this backend does not offer")
    return getattr(agent.model, "module", agent.model)  # past Fabric's wrapper


class FedPer(AgentPlugin):
    """The head modules' parameters stay with each agent (``fedper_head``, a flat vector)."""

    Params = FedPerParams
    FIELD = "fedper_head"
    not_vectorizable_because = "it loads each agent's own head into the model before training"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(self.FIELD, None, None, "The agent's personal head (flat vector of the head modules' "
                                                   "parameters)"),)

    def check_run(self, plan: RunPlan) -> None:
        check_modules(plan.model, self.params.head, "head")

    def _parts(self, agent: AgentContext) -> PersonalParts:
        root = root_module(agent)
        owned = {id(p) for name in self.params.head for p in root.get_submodule(name).parameters()}
        return PersonalParts(agent.params, owned)

    def _load_head(self, agent: AgentContext) -> None:
        self._head = self._parts(agent)
        stored = agent.state[self.FIELD]
        if stored is not None:
            self._head.load(agent.params, stored)

    def on_agent_start(self, agent: AgentContext) -> None:
        self._load_head(agent)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        agent.state[self.FIELD] = self._head.values(agent.params)
        self._head.zero(result.delta)

    def personalize(self, agent: AgentContext) -> None:
        self._load_head(agent)


class FedRep(FedPer):
    """FedPer's personal head, trained first (``head_epochs``, body fixed), then the body for the
    round's epochs with the head fixed (its gradients dropped before each step)."""

    Params = FedRepParams
    FIELD = "fedrep_head"
    not_vectorizable_because = "it trains the head through agent.fit and drops the head's gradients in before_step"

    def on_agent_start(self, agent: AgentContext) -> None:
        self._load_head(agent)
        if agent.fit is None:
            raise RuntimeError("fedrep needs agent.fit, which this backend does not offer")
        agent.fit(epochs=self.params.head_epochs, params=[agent.params[i] for i in self._head.index])

    def before_step(self, agent: AgentContext) -> None:
        for i in self._head.index:
            agent.params[i].grad = None
