"""The hooks a plugin implements to add components to flcore.

Each hook receives a ``register`` callback and calls it once per component::

    from flcore import hookimpl

    @hookimpl
    def register_aggregators(register):
        register("fedmine", "my_package.fedmine:FedMine", description="My aggregator.")

``register(name, target, description="")`` takes the component's name, an import path
``"module:attribute"`` that is imported only when an experiment uses the component (so that
registration stays cheap), and a one-line description shown by ``flcore list-plugins``. The target is
a class or factory with a ``Params`` attribute: the pydantic model of its parameters.

Hooks evolve by gaining arguments, never by renaming. The kinds they register are listed once, in
:mod:`flcore.kinds`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("flcore")
hookimpl = pluggy.HookimplMarker("flcore")


@hookspec
def register_datasets(register):
    """Register datasets: factories returning a :class:`flcore.data.ArrayDataModule`."""


@hookspec
def register_partitioners(register):
    """Register partitioners: subclasses of :class:`flcore.partition.Partitioner`."""


@hookspec
def register_models(register):
    """Register models: factories returning a :class:`flcore.models.ClassifierModule`."""


@hookspec
def register_samplers(register):
    """Register samplers: subclasses of :class:`flcore.sampling.Sampler`."""


@hookspec
def register_aggregators(register):
    """Register aggregators (server strategies): subclasses of :class:`flcore.aggregation.Aggregator`."""


@hookspec
def register_agent_plugins(register):
    """Register agent-side plugins: subclasses of :class:`flcore.agent_plugin.AgentPlugin`."""


@hookspec
def register_server_plugins(register):
    """Register server-side plugins: subclasses of :class:`flcore.server_plugin.ServerPlugin`."""


@hookspec
def register_backends(register):
    """Register execution backends: subclasses of :class:`flcore.backend.Backend`."""


@hookspec
def register_agent_metadata(register):
    """Register agent metadata: subclasses of :class:`flcore.metadata.AgentMetadata`."""


@hookspec
def register_availability_models(register):
    """Register availability models: subclasses of :class:`flcore.availability.Availability`."""


@hookspec
def register_device_profiles(register):
    """Register device profiles: subclasses of :class:`flcore.devices.DeviceProfile`."""


@hookspec
def register_round_policies(register):
    """Register round policies: subclasses of :class:`flcore.policy.RoundPolicy`."""
