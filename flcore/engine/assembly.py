"""Building a federated run's parts from its resolved components, one named job at a time.

:func:`assemble` reads top to bottom: the data and model, the partition, the round components, the
population with every field those components declare, and the backend (with its fallback). Each job
turns a component's rejection of this experiment into bad input (exit code 2) that names the config
section, before any round runs.
"""

from __future__ import annotations

import warnings
from typing import Any

from flcore import seeding
from flcore.agents import AgentField, AgentPopulation
from flcore.backend import Backend, TrainingSetup, Unsupported
from flcore.config import ExperimentConfig
from flcore.errors import ConfigError, RunFailure
from flcore.protocol import SETUP_STREAM, RoundComponent, RunPlan, component_rng, overrides
from flcore.resolve import Resolved
from flcore.server_plugin import ServerPlugin

#: per-agent fields the engine itself keeps (sampling.csv, agents_seen)
ENGINE_FIELDS = (AgentField("selected_count", 0, "int64", "How many rounds the agent was selected in."),)


def build_data_and_model(config: ExperimentConfig, components: dict[str, Any]) -> tuple[Any, Any]:
    """The dataset, then the model for its inputs and classes (initialized from the seed)."""
    data = components["dataset"].build()
    augment = config.training.augment
    if (augment.crop_padding or augment.horizontal_flip) and len(data.spec.input_shape) != 3:
        raise ConfigError(f"training.augment = {augment.model_dump()}: crops and flips apply to images (channels, "
                          f"height, width), but dataset '{components['dataset'].component.name}' gives inputs of shape "
                          f"{data.spec.input_shape}.")
    seeding.seed_torch(config.seed, seeding.INIT)
    with components["model"].rejecting():
        model = components["model"].build(data.spec)
    return data, model


def build_partition(config: ExperimentConfig, components: dict[str, Any], data: Any) -> Any:
    """The agents' shards, checked to be one per agent."""
    resolved: Resolved = components["partitioner"]
    agents = config.federation.agents
    with resolved.rejecting():
        partition = resolved.build().split(data.train_labels, agents, seeding.numpy_rng(config.seed, seeding.PARTITION),
                                           data.groups)
    if partition.num_agents != agents:
        raise RunFailure(f"{resolved.label} returned {partition.num_agents} shards for federation.agents = {agents}")
    return partition


def build_components(components: dict[str, Any]) -> tuple[dict[str, Any], dict[int, str]]:
    """The round components (sampler, strategy, plugins, metadata), each knowing its name."""
    built: dict[str, Any] = {}
    labels: dict[int, str] = {}
    for kind in ("sampler", "aggregator", "availability", "device_profile", "round_policy"):
        built[kind] = components[kind].build()
        labels[id(built[kind])] = components[kind].label
    for kind in ("agent_plugin", "server_plugin", "agent_metadata"):
        built[kind] = []
        for resolved in components[kind]:
            item = resolved.build()
            labels[id(item)] = resolved.label
            built[kind].append(item)
    return built, labels


def build_population(partition: Any, parts: list[RoundComponent], seed: int) -> AgentPopulation:
    """The population with every field the engine and the run's components declare, then each
    component's :meth:`~flcore.protocol.RoundComponent.setup` from its own seeded stream."""
    population = AgentPopulation(partition, ENGINE_FIELDS)
    for part in parts:
        for agent_field in part.state_fields():
            try:
                population.add_field(agent_field)
            except ValueError as exc:
                raise ConfigError(f"{part.component_name}: {exc}") from None
    for part in parts:
        part.setup(population, component_rng(seed, part, SETUP_STREAM))
    return population


def prepare_policy(policy: Any, strategy: Any, setup: Any, labels: dict[int, str]) -> None:
    """The round policy accepts the strategy and can work with these devices and settings (a
    deadline some agent can meet), or the run stops with exit code 2 before any round."""
    reason = policy.check_strategy(strategy)
    if reason:
        raise ConfigError(f"federation.round_policy: {labels.get(id(policy))} cannot run with "
                          f"{labels.get(id(strategy))}: {reason}")
    try:
        policy.prepare(setup)
    except ValueError as exc:
        raise ConfigError(f"federation.round_policy: {labels.get(id(policy))} cannot be used here: {exc}") from None


def check_server_plugins(strategy: Any, server_plugins: list[Any], labels: dict[int, str]) -> None:
    """Each server-side plugin accepts the strategy it wraps, or the run stops with exit code 2."""
    for plugin in server_plugins:
        reason = plugin.check_strategy(strategy)
        if not reason and overrides(plugin, "process_sum", ServerPlugin) and not getattr(strategy, "sum_based", False):
            reason = ("it changes the sum of updates before the strategy divides it, and this strategy does not "
                      "declare sum_based (it hands out no such sum)")
        if reason:
            raise ConfigError(f"{labels.get(id(plugin))} cannot wrap {labels.get(id(strategy))}: {reason}")


def prepare_backend(backend: Backend, setup: TrainingSetup, label: str) -> Backend:
    """The backend, checked against the experiment; its fallback (with a warning) when it cannot
    train it, or bad input naming both when it has none (``strict``)."""
    try:
        backend.check(setup)
    except Unsupported as exc:
        fallback = backend.fallback()
        if fallback is None:
            raise ConfigError(f"{label} cannot train this experiment: {exc}.") from None
        warnings.warn(f"{label} cannot train this experiment ({exc}); falling back to "
                      f"{type(fallback).__name__}", stacklevel=2)
        fallback.component_name = backend.component_name
        backend = fallback
        backend.check(setup)
    backend.prepare(setup)
    return backend


def training_tensors(data: Any, device: Any) -> tuple[Any, Any]:
    """The training tensors, moved to an accelerator once rather than per batch."""
    x, y = data.x_train, data.y_train
    if device.type != "cpu":
        x, y = x.to(device), y.to(device)
    return x, y


def check_run(config: ExperimentConfig, components: dict[str, Any], built: dict[str, Any], data: Any,
              model: Any = None, shard_sizes: Any = None) -> None:
    """Each round component's :meth:`~flcore.protocol.RoundComponent.check_run` against the run's
    facts, before any round: a ``ValueError`` becomes bad input naming its config section."""
    federation = config.federation
    plan = RunPlan(federation.agents, federation.rounds, built["sampler"].cohort_size(federation.agents), data,
                   model, built["sampler"], config.training, shard_sizes)
    for kind in ("sampler", "aggregator", "server_plugin", "agent_plugin", "agent_metadata"):
        entries, items = components[kind], built[kind]
        for resolved, item in zip(entries, items) if isinstance(items, list) else [(entries, items)]:
            with resolved.rejecting():
                item.check_run(plan)
