"""The component kinds: one list, read by the hook specifications, the registry, the CLI and the
plugin templates, so that a new kind is added in one place.

Each kind has the hook that registers it and the interface its targets implement (an import path,
so that reading this list imports nothing heavy).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of component."""

    name: str
    hook: str
    interface: str
    summary: str


KINDS: tuple[Kind, ...] = (
    Kind("dataset", "register_datasets", "flcore.data:ArrayDataModule",
         "Training and test tensors, as a Lightning datamodule."),
    Kind("partitioner", "register_partitioners", "flcore.partition:Partitioner",
         "Splits the training labels into the agents' shards."),
    Kind("model", "register_models", "flcore.models:ClassifierModule",
         "The network every agent trains, as a Lightning module."),
    Kind("sampler", "register_samplers", "flcore.sampling:Sampler",
         "Chooses the agents that train in a round, among the available ones."),
    Kind("aggregator", "register_aggregators", "flcore.aggregation:Aggregator",
         "The server strategy: instructs agents and combines their updates into the next global model."),
    Kind("agent_plugin", "register_agent_plugins", "flcore.agent_plugin:AgentPlugin",
         "Agent-side behaviour during local training: a loss term, gradient edits, the finished update."),
    Kind("server_plugin", "register_server_plugins", "flcore.server_plugin:ServerPlugin",
         "Server-side steps around any strategy: each update before it, the aggregate after it."),
    Kind("backend", "register_backends", "flcore.backend:Backend",
         "How a round's agents are trained: one after another, vectorized, or across processes."),
    Kind("agent_metadata", "register_agent_metadata", "flcore.metadata:AgentMetadata",
         "Per-agent fields kept across rounds and checkpointed (read by samplers and strategies)."),
    Kind("availability", "register_availability_models", "flcore.availability:Availability",
         "Which agents are online in a round (always, Bernoulli, diurnal, a trace of online intervals)."),
    Kind("device_profile", "register_device_profiles", "flcore.devices:DeviceProfile",
         "Per-agent compute speed and bandwidths: how many virtual seconds an agent's round takes."),
    Kind("round_policy", "register_round_policies", "flcore.policy:RoundPolicy",
         "When a round ends on the virtual clock: deadlines, stragglers, over-selection, asynchronous FL."),
)

#: kind name -> the hook that registers it
HOOKS: dict[str, str] = {kind.name: kind.hook for kind in KINDS}


def kind_names() -> list[str]:
    """The kinds' names in their documented order."""
    return [kind.name for kind in KINDS]


def kind(name: str) -> Kind:
    """The kind called ``name``."""
    for candidate in KINDS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
