"""FedExP for flcore: a server strategy, registered through the ``flcore`` entry point group."""

from flcore import hookimpl


@hookimpl
def register_aggregators(register):
    register(
        "fedexp",
        "flcore_fedexp.fedexp:FedExP",
        "FedExP: FedAvg extrapolated by a server step size from the update norms (Jhunjhunwala et al. 2023).",
    )
