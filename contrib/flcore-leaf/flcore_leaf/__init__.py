"""LEAF datasets (FEMNIST, Shakespeare) and LEAF's character model for flcore."""

from flcore import hookimpl


@hookimpl
def register_datasets(register):
    register("femnist", "flcore_leaf.femnist:FEMNIST",
             "LEAF FEMNIST from a local folder; writers kept for the natural partitioner.")
    register("shakespeare", "flcore_leaf.shakespeare:Shakespeare",
             "LEAF Shakespeare next-character prediction from a local folder; roles kept as natural groups.")


@hookimpl
def register_models(register):
    register("char_lstm", "flcore_leaf.char_lstm:CharLSTM", "LEAF's 2-layer character LSTM for Shakespeare.")
