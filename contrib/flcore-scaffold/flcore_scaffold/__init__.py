"""SCAFFOLD for flcore: registered through the ``flcore`` entry point group."""

from flcore import hookimpl


@hookimpl
def register_aggregators(register):
    register("scaffold", "flcore_scaffold.scaffold:Scaffold",
             "SCAFFOLD: drift-corrected local steps with control variates (Karimireddy et al. 2020).")


@hookimpl
def register_agent_metadata(register):
    register("scaffold_control", "flcore_scaffold.scaffold:ControlVariates",
             "Each agent's SCAFFOLD control variate c_i (sparse: only agents that trained hold one).")
