"""Built-in agent metadata."""

from flcore import hookimpl


@hookimpl
def register_agent_metadata(register):
    register(
        "participation",
        "flcore_plugins.metadata.participation:Participation",
        "Times selected, last round selected and last local loss of every agent.",
    )
