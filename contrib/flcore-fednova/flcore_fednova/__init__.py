"""FedNova for flcore: a server strategy, registered through the ``flcore`` entry point group."""

from flcore import hookimpl


@hookimpl
def register_aggregators(register):
    register("fednova", "flcore_fednova.fednova:FedNova",
             "FedNova: updates normalized by each agent's local steps (Wang et al. 2020).")
