"""Built-in samplers."""

from flcore import hookimpl

_MODULE = "flcore_plugins.samplers.basic"


@hookimpl
def register_samplers(register):
    register("uniform", f"{_MODULE}:UniformSampler", "Uniformly random agents, by fraction or count, without replacement.")
    register("all", f"{_MODULE}:AllSampler", "Every agent, every round.")
    register("weighted", f"{_MODULE}:WeightedSampler", "Random agents with probability proportional to their data size.")
    register("poisson", "flcore_plugins.samplers.poisson:PoissonSampler",
             "Each available agent independently with probability rate (Poisson sampling, as DP accounting assumes).")
    register("round_robin", f"{_MODULE}:RoundRobinSampler", "Consecutive blocks of agents in id order, cycling.")
