"""Built-in server-side plugins."""

from flcore import hookimpl

_MODULE = "flcore_plugins.server_plugins"


@hookimpl
def register_server_plugins(register):
    register("norm_bound", f"{_MODULE}.norm_bound:NormBound",
             "Clip each update to an L2 norm, optionally add Gaussian noise to the aggregate (Sun et al. 2019).")
    register("dp_fedavg", f"{_MODULE}.dp_fedavg:DPFedAvg",
             "User-level DP-FedAvg: clip updates, noise their sum, report epsilon (McMahan et al. 2018).")
    register("train_set", f"{_MODULE}.train_set:TrainSet",
             "Log the global model's loss and accuracy on all the training data (FedProx's training-loss curves).")
