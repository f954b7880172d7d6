"""Shejwalkar and Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
Defenses for Federated Learning" (NDSS 2021), for flcore: the Min-Max attack and the DnC defense,
registered through the ``flcore`` entry point group."""

from flcore import hookimpl


@hookimpl
def register_agent_plugins(register):
    register("min_max", "flcore_dnc.minmax:MinMax",
             "Colluding attack: the honest mean pushed as far as the honest updates' spread allows (Min-Max).")


@hookimpl
def register_aggregators(register):
    register("dnc", "flcore_dnc.dnc:DivideAndConquer",
             "DnC: drop the updates that project most on the top singular vector of random coordinates.")
