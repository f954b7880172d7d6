"""Built-in availability models."""

from flcore import hookimpl

_MODULE = "flcore_plugins.availability"


@hookimpl
def register_availability_models(register):
    register("always", f"{_MODULE}.models:Always", "Every agent is online in every round.")
    register("bernoulli", f"{_MODULE}.models:Bernoulli", "Each agent is online in a round with probability p.")
    register("diurnal", f"{_MODULE}.models:Diurnal",
             "A daily cycle: the online probability follows a cosine over virtual time, each agent its own phase.")
    register("trace", f"{_MODULE}.trace:TraceAvailability",
             "Online intervals per agent from a CSV (or Parquet) trace, on the virtual clock.")
