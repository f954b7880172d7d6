"""Reproduce the shape of FedProx's Figure 1 (Li et al., MLSys 2020): on Synthetic(1,1), with 50% and
90% stragglers, FedProx keeping the stragglers' partial work reaches a lower training loss than
FedAvg dropping them.

    python examples/fedprox_stragglers.py                       # 40 rounds, a few minutes on 2 cores
    python examples/fedprox_stragglers.py --rounds 200 --mu0    # the paper's horizon, and FedProx with mu = 0

The paper's setup: 30 devices (one per Synthetic user, the ``natural`` partitioner), 10 selected per
round, E = 20 local epochs, batch 10, SGD with lr 0.01, multinomial logistic regression, training
loss of the global model on all training data (the ``train_set`` server plugin). Stragglers are
``round_policy: stragglers``: a share of each round's agents does a random number of epochs in
1..19 (kept as partial work, ``keep_partial``) or is dropped (``drop``). Prints a Markdown table and
writes a plot (``--plot``).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

METHODS = {
    "FedAvg (drop stragglers)": ({"name": "fedavg"}, "drop"),
    "FedProx, mu=0 (keep partial work)": ({"name": "fedprox", "mu": 0.0}, "keep_partial"),
    "FedProx, mu=1 (keep partial work)": ({"name": "fedprox", "mu": 1.0}, "keep_partial"),
}
SHARES = (0.5, 0.9)


def config(method: str, share: float, rounds: int, seed: int) -> dict[str, Any]:
    aggregator, mode = METHODS[method]
    return {
        "name": f"fedprox-stragglers-{int(share * 100)}-{aggregator['name']}{aggregator.get('mu', '')}",
        "seed": seed,
        "dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0},
        "model": "logistic",
        "federation": {"agents": 30, "rounds": rounds, "partitioner": "natural",
                       "sampler": {"name": "uniform", "count": 10}, "aggregator": aggregator,
                       "round_policy": {"name": "stragglers", "share": share, "mode": mode},
                       "server_plugins": ["train_set"]},
        "training": {"epochs": 20, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.01}},
        "logging": {"loggers": ["csv"], "profiler": None, "progress": "off", "agent_metrics": False},
        "checkpoint": {"every": 10},
    }


def run_one(job: tuple[str, float, int, int, str]) -> tuple[str, float, list[float], list[float]]:
    """One run in its own process, one thread: the model is tiny, so threads only contend."""
    import torch

    torch.set_num_threads(1)
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    method, share, rounds, seed, out = job
    result = Experiment(validate_config(config(method, share, rounds, seed))).run(out_dir=out, progress=False)
    return (method, share, [row["train_set/loss"] for row in result.history],
            [row["test_acc"] for row in result.history])


def table(results: list[tuple[str, float, list[float], list[float]]], rounds: int) -> str:
    marks = sorted({r for r in (1, 5, 10, 20, 40, 100, 200, rounds) if r <= rounds})
    lines = ["| stragglers | method | " + " | ".join(f"round {r}" for r in marks) + " | final test acc |",
             "|---|---|" + "---|" * (len(marks) + 1)]
    for method, share, loss, acc in sorted(results, key=lambda x: (x[1], list(METHODS).index(x[0]))):
        lines.append(f"| {share:.0%} | {method} | " + " | ".join(f"{loss[r - 1]:.4f}" for r in marks) +
                     f" | {acc[-1]:.4f} |")
    return "\n".join(lines)


def plot(results: list[tuple[str, float, list[float], list[float]]], path: Path) -> None:
    from flcore.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SHARES), figsize=(10, 3.6), sharey=True)
    for ax, share in zip(axes, SHARES):
        for method, s, loss, _ in sorted(results, key=lambda x: list(METHODS).index(x[0])):
            if s == share:
                ax.plot(range(1, len(loss) + 1), loss, label=method)
        ax.set(title=f"Synthetic(1,1), {share:.0%} stragglers", xlabel="round", ylabel="training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mu0", action="store_true", help="Also run FedProx with mu = 0 (partial work alone).")
    parser.add_argument("--out", default="runs/fedprox-stragglers")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--plot", type=Path, default=Path("runs/fedprox-stragglers/figure1.png"))
    args = parser.parse_args()
    methods = [m for m in METHODS if args.mu0 or "mu=0" not in m]
    jobs = [(m, share, args.rounds, args.seed, args.out) for share in SHARES for m in methods]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(run_one, jobs))
    print(table(results, args.rounds))
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
