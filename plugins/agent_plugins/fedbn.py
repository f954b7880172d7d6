"""FedBN (Li, Jiang, Zhang, Kamp and Dou, ICLR 2021, "FedBN: Federated Learning on Non-IID
Features via Local Batch Normalization"): BatchNorm layers stay local.

Each agent keeps its BatchNorm weights and biases and its running statistics (running mean,
variance and batch counter) as per-agent state, two flat vectors. They are loaded at the agent's
next round and at its evaluation; after training they are stored, their coordinates of the update
set to zero and the statistics the agent reports set back to the global ones, so neither the
strategy nor the engine's buffer averaging mixes them. The global model's BatchNorm layers stay the
initial ones: FedBN has no global model for them, and its global test accuracy says little.
"""

from __future__ import annotations

from typing import Sequence

import torch
from flcore_plugins.agent_plugins.fedper import PersonalParts, root_module
from torch import nn

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import NoParams
from flcore.protocol import AgentContext, AgentResult, RunPlan

PARAMS, BUFFERS = "fedbn_params", "fedbn_buffers"


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class FedBN(AgentPlugin):
    """Every BatchNorm layer's parameters and buffers are the agent's own."""

    Params = NoParams
    not_vectorizable_because = "it loads each agent's own BatchNorm weights and statistics into the model"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(PARAMS, None, None, "FedBN: the agent's BatchNorm weights and biases (flat vector)"),
                AgentField(BUFFERS, None, None, "FedBN: the agent's BatchNorm running statistics (flat float64)"))

    def check_run(self, plan: RunPlan) -> None:
        if plan.model is not None and not norm_layers(plan.model):
            raise ValueError("the model has no BatchNorm layer, so FedBN would be FedAvg; use a model with BatchNorm")

    def _load(self, agent: AgentContext) -> None:
        root = root_module(agent)
        layers = norm_layers(root)
        self._parts = PersonalParts(agent.params, {id(p) for _, m in layers for p in m.parameters()})
        self._buffers = [(f"{name}.{b}", buf) for name, m in layers for b, buf in m.named_buffers(recurse=False)
                         if buf is not None]
        self._global = {name: buf.detach().clone() for name, buf in self._buffers}
        params, buffers = agent.state[PARAMS], agent.state[BUFFERS]
        if params is not None and self._parts.index:
            self._parts.load(agent.params, params)
        if buffers is not None:
            offset = 0
            with torch.no_grad():
                for _, buf in self._buffers:
                    n = buf.numel()
                    buf.copy_(buffers[offset : offset + n].view_as(buf).to(buf))
                    offset += n

    def on_agent_start(self, agent: AgentContext) -> None:
        self._load(agent)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if self._parts.index:
            agent.state[PARAMS] = self._parts.values(agent.params)
            self._parts.zero(result.delta)
        agent.state[BUFFERS] = torch.cat([buf.detach().reshape(-1).double().cpu() for _, buf in self._buffers])
        for name, value in self._global.items():
            if name in result.buffers:
                result.buffers[name] = value

    def personalize(self, agent: AgentContext) -> None:
        self._load(agent)
