"""Hugging Face datasets and Flower Datasets' partitioners for flcore.

Registration names the targets as strings, so ``datasets`` and ``flwr_datasets`` are imported only
when an experiment uses one of these components.
"""

from flcore import hookimpl
from flcore_hf.partitioners import SCHEMES


@hookimpl
def register_datasets(register):
    register("hf", "flcore_hf.dataset:HFDataset",
             "A Hugging Face dataset from a folder (save_to_disk) or the local cache; image or tabular columns by name.")


@hookimpl
def register_partitioners(register):
    for name, cls in SCHEMES.items():
        register(name, f"flcore_hf.partitioners:{cls.__name__}", cls.__doc__.strip())
