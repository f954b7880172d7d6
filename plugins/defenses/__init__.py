"""Built-in Byzantine-robust strategies beyond the coordinate-wise ones and Krum: Bulyan, centered
clipping and FLTrust (norm bounding is the server-side plugin ``norm_bound``)."""

from flcore import hookimpl

_MODULE = "flcore_plugins.defenses"


@hookimpl
def register_aggregators(register):
    register("bulyan", f"{_MODULE}.bulyan:Bulyan",
             "Bulyan: Krum-selected set, then a trimmed mean around the median (El Mhamdi et al. 2018).")
    register("centered_clipping", f"{_MODULE}.centered_clipping:CenteredClipping",
             "Centered clipping around the previous aggregate (Karimireddy et al. 2021).")
    register("fltrust", f"{_MODULE}.fltrust:FLTrust",
             "FLTrust: updates weighted by their cosine to the server's root-data update (Cao et al. 2021).")
