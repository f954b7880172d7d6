"""SCAFFOLD for flcore: a strategy and its agent-side plugin, registered through the ``flcore``
entry point group."""

from flcore import hookimpl


@hookimpl
def register_aggregators(register):
    register("scaffold", "flcore_scaffold.scaffold:Scaffold",
             "SCAFFOLD: drift-corrected local steps with control variates (Karimireddy et al. 2020).")


@hookimpl
def register_agent_plugins(register):
    register("scaffold_correction", "flcore_scaffold.scaffold:ScaffoldCorrection",
             "SCAFFOLD's agent side: corrects each step by c - c_i and keeps c_i per agent.")
