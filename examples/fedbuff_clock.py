"""FedBuff (Nguyen et al. 2022) and FedAsync (Xie et al. 2019) against synchronous FedAvg on the same
device profile: test accuracy against virtual time.

    python examples/fedbuff_clock.py                 # about three minutes on 2 cores
    python examples/fedbuff_clock.py --seed 1

100 agents hold IID shards of the embedded digits; each trains 5 local epochs (batch 16, SGD lr
0.1) of a one-hidden-layer MLP. Their compute speeds are log-normal (median 10 samples per second,
sigma 1: the slowest of ten agents is typically five times slower than the median one); all runs
draw the same speeds (the profile's stream depends on the seed and its name only). Synchronous
FedAvg samples 10 agents a round and waits for the slowest. FedBuff keeps 20 agents training and
steps every 10 arrivals, each update scaled by 1/sqrt(1 + staleness); FedAsync keeps 20 training
and mixes in every arrival (alpha 0.6, the same staleness weight). Every run uses fedavg with
``weighted: false`` for the server step. Prints a Markdown table and writes a plot (``--plot``).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

DEVICES = {"name": "drawn", "compute_speed": {"distribution": "lognormal", "median": 10.0, "sigma": 1.0}}
RUNS = {  # name: (round policy, sampler, rounds)
    "FedAvg, synchronous (10 per round)": ({"name": "synchronous"}, {"name": "uniform", "count": 10}, 40),
    "FedBuff (K = 10, concurrency 20)": ({"name": "fedbuff", "buffer": 10, "concurrency": 20},
                                        {"name": "uniform", "fraction": 1.0}, 260),
    "FedAsync (concurrency 20, alpha 0.6)": ({"name": "fedasync", "concurrency": 20, "alpha": 0.6},
                                             {"name": "uniform", "fraction": 1.0}, 3600),
}


def config(name: str, seed: int) -> dict[str, Any]:
    policy, sampler, rounds = RUNS[name]
    return {
        "name": f"clock-{policy['name']}",
        "seed": seed,
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [32]},
        "federation": {"agents": 100, "rounds": rounds, "sampler": sampler, "round_policy": policy,
                       "device_profile": DEVICES, "aggregator": {"name": "fedavg", "weighted": False}},
        "training": {"epochs": 5, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}},
        "evaluation": {"every": max(1, rounds // 100)},
        "logging": {"loggers": ["csv"], "profiler": None, "progress": "off", "agent_metrics": False},
        "checkpoint": {"every": max(1, rounds // 10)},
    }


def run_one(job: tuple[str, int, str]) -> tuple[str, np.ndarray, np.ndarray, list[float]]:
    import torch

    torch.set_num_threads(1)  # a tiny model: threads only contend
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    name, seed, out = job
    history = Experiment(validate_config(config(name, seed))).run(out_dir=out, progress=False).history
    rows = [row for row in history if row.get("test_acc") is not None]
    staleness = [row[k] for row in history for k in row if k.endswith("/staleness")]
    return name, np.array([r["virtual_seconds"] for r in rows]), np.array([r["test_acc"] for r in rows]), staleness


def accuracy_at(clock: np.ndarray, acc: np.ndarray, t: float) -> float:
    """The accuracy of the last evaluation at or before virtual time ``t`` (nan before the first, or
    after the run ended)."""
    if t > clock[-1]:
        return float("nan")
    seen = np.flatnonzero(clock <= t)
    return float(acc[seen[-1]]) if len(seen) else float("nan")


def time_to(clock: np.ndarray, acc: np.ndarray, target: float) -> str:
    reached = np.flatnonzero(acc >= target)
    return f"{clock[reached[0]]:,.0f}" if len(reached) else "not reached"


def table(results: list[tuple[str, np.ndarray, np.ndarray, list[float]]]) -> str:
    horizon = float(results[0][1][-1])  # the synchronous run's end
    marks = [horizon * f for f in (0.1, 0.25, 0.5, 1.0)]
    lines = ["| run | " + " | ".join(f"acc at {t:,.0f} s" for t in marks) + " | s to 0.80 | s to 0.90 | mean staleness |",
             "|---|" + "---|" * (len(marks) + 3)]
    for name, clock, acc, staleness in results:
        lines.append(f"| {name} | " + " | ".join(f"{accuracy_at(clock, acc, t):.4f}" for t in marks) +
                     f" | {time_to(clock, acc, 0.8)} | {time_to(clock, acc, 0.9)} | "
                     f"{np.mean(staleness) if staleness else 0:.2f} |")
    return "\n".join(lines)


def plot(results: list[tuple[str, np.ndarray, np.ndarray, list[float]]], path: Path) -> None:
    from flcore.plots import _pyplot

    plt = _pyplot()
    horizon = float(results[0][1][-1])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, clock, acc, _ in results:
        keep = clock <= horizon
        ax.plot(clock[keep] / 60, acc[keep], label=name)
    ax.set(xlabel="virtual time (minutes)", ylabel="test accuracy", title="digits, 100 agents, log-normal speeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/fedbuff-clock")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--plot", type=Path, default=Path("runs/fedbuff-clock/accuracy_vs_time.png"))
    args = parser.parse_args()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(run_one, [(name, args.seed, args.out) for name in RUNS]))
    print(table(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
