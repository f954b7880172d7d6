"""Built-in aggregators."""

from flcore import hookimpl

_MODULE = "flcore_plugins.aggregators"


@hookimpl
def register_aggregators(register):
    register("fedavg", f"{_MODULE}.fedavg:FedAvg", "FedAvg: mean of updates weighted by samples (McMahan et al. 2017).")
    register("fedsgd", f"{_MODULE}.fedavg:FedSGD", "FedSGD: one full-batch local step, averaged gradients.")
    register("fedavgm", f"{_MODULE}.fedavg:FedAvgM", "FedAvgM: FedAvg with server momentum (Hsu et al. 2019).")
    register("fedprox", f"{_MODULE}.fedprox:FedProx", "FedProx: FedAvg with a proximal local term (Li et al. 2020).")
    register("feddyn", f"{_MODULE}.feddyn:FedDyn",
             "FedDyn: dynamic regularization with server state h (Acar et al. 2021).")
    register("qffl", f"{_MODULE}.qffl:QFFL",
             "q-FFL (q-FedAvg): agents weighted by their loss to the power q (Li et al. 2020).")
    register("scaffold", f"{_MODULE}.scaffold:Scaffold",
             "SCAFFOLD: drift-corrected local steps with control variates (Karimireddy et al. 2020).")
    register("fedadam", f"{_MODULE}.fedopt:FedAdam", "FedAdam: adaptive server optimizer (Reddi et al. 2021).")
    register("fedyogi", f"{_MODULE}.fedopt:FedYogi", "FedYogi: adaptive server optimizer (Reddi et al. 2021).")
    register("fedadagrad", f"{_MODULE}.fedopt:FedAdagrad", "FedAdagrad: adaptive server optimizer (Reddi et al. 2021).")
    register("fedmedian", f"{_MODULE}.robust:FedMedian", "Coordinate-wise median of updates (Yin et al. 2018).")
    register("trimmed_mean", f"{_MODULE}.robust:TrimmedMean", "Coordinate-wise trimmed mean (Yin et al. 2018).")
    register("krum", f"{_MODULE}.robust:Krum", "Krum: the update closest to its neighbours (Blanchard et al. 2017).")
    register("multikrum", f"{_MODULE}.robust:MultiKrum", "Multi-Krum: mean of the m best Krum scores.")
