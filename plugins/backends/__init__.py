"""Built-in execution backends."""

from flcore import hookimpl

_MODULE = "flcore_plugins.backends"


@hookimpl
def register_backends(register):
    register("sequential", f"{_MODULE}.sequential:SequentialBackend",
             "One reused model and optimizer per process, agents one after another.")
    register("vectorized", f"{_MODULE}.vectorized:VectorizedBackend",
             "A round's agents train at once with torch.func (vmap over stacked parameters).")
    register("distributed", f"{_MODULE}.distributed:DistributedBackend",
             "Agents spread over processes (runtime.devices, runtime.num_nodes) with Lightning Fabric.")
