"""Built-in round policies."""

from flcore import hookimpl

_MODULE = "flcore_plugins.policies"


@hookimpl
def register_round_policies(register):
    register("synchronous", f"{_MODULE}.synchronous:Synchronous",
             "Every selected agent is waited for: a round lasts as long as its slowest agent.")
    register("deadline", f"{_MODULE}.synchronous:Deadline",
             "A reporting deadline: late agents are dropped, or do only the steps that fit (FedProx's partial work).")
    register("over_selection", f"{_MODULE}.synchronous:OverSelection",
             "Select more agents than needed and keep the first K to report (Bonawitz et al. 2019).")
    register("stragglers", f"{_MODULE}.stragglers:Stragglers",
             "FedProx's straggler model: a share of agents does a random number of epochs below the budget.")
    register("fedasync", f"{_MODULE}.asynchronous:FedAsync",
             "Asynchronous FL (Xie et al. 2019): each arriving update is mixed in, weighted by its staleness.")
    register("fedbuff", f"{_MODULE}.asynchronous:FedBuff",
             "Buffered asynchronous FL (Nguyen et al. 2022): a server step every K arrivals, a concurrency limit.")
