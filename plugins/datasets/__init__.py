"""Built-in datasets."""

from flcore import hookimpl

_MODULE = "flcore_plugins.datasets"


@hookimpl
def register_datasets(register):
    register("digits", f"{_MODULE}.digits:Digits",
             "scikit-learn's 1,797 handwritten digits (8x8, 10 classes); embedded, no download.")
    register("synthetic", f"{_MODULE}.synthetic:Synthetic",
             "Synthetic(alpha, beta) of the FedProx paper, generated per user; embedded, no download.")
