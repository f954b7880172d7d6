"""LEAF datasets for flcore."""

from flcore import hookimpl


@hookimpl
def register_datasets(register):
    register("femnist", "flcore_leaf.femnist:FEMNIST",
             "LEAF FEMNIST from a local folder; writers kept for the natural partitioner.")
