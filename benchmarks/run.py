"""Run the speed benchmarks and print seconds per round, memory and the ratio flcore / baseline.

    python benchmarks/run.py                          # E1, E2, E3
    python benchmarks/run.py E1 E3                    # a subset
    python benchmarks/run.py E1 --cpu-time --threads 1 --repeats 6   # on a shared machine

Each workload runs, in the same process, the plain-PyTorch baseline and flcore, twice each,
alternating; a round's time is the median over rounds after the first (warm-up) and both repeats.
Memory is the process's resident set after the workload minus before it (MiB).

``--cpu-time`` times rounds (the baseline's and flcore's alike) by this process's CPU time instead of
the wall clock: on a machine other jobs share, wall-clock rounds swing by tens of percent between
neighbouring runs while CPU time with one thread stays within a few percent.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import workloads  # noqa: E402
from workloads import E1, E2, BenchPlugin, baseline_rounds, e3, flcore_config  # noqa: E402

import flcore.engine.federated as federated_engine  # noqa: E402
from flcore.config import validate_config  # noqa: E402
from flcore.experiment import Experiment  # noqa: E402
from flcore.registry import discover  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_flcore(w, registry, out_dir, backend="sequential"):
    started = time.perf_counter()
    experiment = Experiment(validate_config(flcore_config(w, backend)), registry=registry)
    result = experiment.run(out_dir=out_dir, progress=False)
    rounds = [row["seconds"] for row in result.history]
    return rounds, result.final["setup_seconds"] + (time.perf_counter() - started - result.final["seconds"])


def run_baseline(w, registry):
    experiment = Experiment(validate_config(flcore_config(w)), registry=registry)
    data = experiment.components["dataset"].build()
    net = experiment.components["model"].build(data.spec)
    return baseline_rounds(w, net, data)


def measure(w, registry, out_dir, repeats=3, vectorized=True):
    kinds = ["baseline", "flcore"] + (["vectorized"] if vectorized else [])
    times = {k: [] for k in kinds}
    memory = {k: 0.0 for k in kinds}
    setup = []
    for _ in range(repeats):
        for kind in kinds:
            gc.collect()
            before = rss_mib()
            if kind == "baseline":
                rounds = run_baseline(w, registry)
            else:
                rounds, startup = run_flcore(w, registry, out_dir, "sequential" if kind == "flcore" else kind)
                setup.append(startup)
            memory[kind] = max(memory[kind], rss_mib() - before)
            times[kind] += rounds[1:]
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"workload": w.name, "baseline_s": median["baseline"], "flcore_s": median["flcore"],
            "ratio": median["flcore"] / median["baseline"], "baseline_mib": memory["baseline"],
            "flcore_mib": memory["flcore"], "startup_s": min(setup),
            "vectorized_s": median.get("vectorized", float("nan")),
            "vectorized_ratio": median.get("vectorized", float("nan")) / median["baseline"]}


def time_rounds_by_cpu() -> None:
    """Make the baseline's and flcore's round timers read this process's CPU time."""
    clock = type(time)("cpu_time")
    clock.__dict__.update({k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.perf_counter = time.process_time
    workloads.time = federated_engine.time = clock


def main(argv: list[str]) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="E1|E2|E3", help="workloads to run (default: all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, alternating")
    parser.add_argument("--cpu-time", action="store_true", help="time rounds by CPU time, not the wall clock")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.workloads) - {"E1", "E2", "E3"})
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}: expected E1, E2 or E3")
    if args.cpu_time:
        time_rounds_by_cpu()
    torch.set_num_threads(args.threads)
    registry = discover(extra_plugins=[("bench", BenchPlugin)])
    workloads_by_key = {"E1": [E1], "E2": [E2], "E3": [e3(1_000), e3(10_000), e3(100_000)]}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall-clock'} seconds")
    print(f"{'workload':12s} {'baseline s/round':>17s} {'flcore s/round':>15s} {'ratio':>6s} "
          f"{'baseline MiB':>13s} {'flcore MiB':>11s} {'startup s':>10s} {'vectorized s/round':>19s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as out_dir:
        for key in args.workloads or ["E1", "E2", "E3"]:
            for w in workloads_by_key[key]:
                r = measure(w, registry, out_dir, repeats=args.repeats, vectorized=not w.name.startswith("E3"))
                print(f"{r['workload']:12s} {r['baseline_s']:17.3f} {r['flcore_s']:15.3f} {r['ratio']:6.3f} "
                      f"{r['baseline_mib']:13.0f} {r['flcore_mib']:11.0f} {r['startup_s']:10.2f} "
                      f"{r['vectorized_s']:19.3f} {r['vectorized_ratio']:6.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
