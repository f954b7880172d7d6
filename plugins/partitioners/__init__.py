"""Built-in partitioners."""

from flcore import hookimpl

_MODULE = "flcore_plugins.partitioners"


@hookimpl
def register_partitioners(register):
    register("iid", f"{_MODULE}.iid:IID", "IID without replacement: a seeded shuffle split into near-equal shards.")
    register("niid", f"{_MODULE}.shards:NIIDShards",
             "TorchFL's non-IID: niid_factor shards per agent of the label-sorted index (bounds shards, not classes).")
    register("k_classes", f"{_MODULE}.label_skew:KClasses", "Pathological label skew: exactly k classes per agent.")
    register("dirichlet", f"{_MODULE}.label_skew:Dirichlet", "Label skew: per-class agent shares ~ Dirichlet(alpha).")
    register("quantity_skew", f"{_MODULE}.iid:QuantitySkew", "IID labels, agent sizes from a log-normal or power law.")
    register("natural", f"{_MODULE}.natural:Natural", "One agent per natural group (writer, user) of the dataset.")
