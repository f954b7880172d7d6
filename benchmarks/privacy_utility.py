"""Privacy against utility on the embedded digits: test accuracy and epsilon for a few noise
multipliers of ``dp_fedavg``, against the same runs without the plugin.

    python benchmarks/privacy_utility.py            # prints the table
    python benchmarks/privacy_utility.py --write    # also writes it into docs/privacy.md

200 agents share the 1,437 training images (about 7 each, IID), 40 are sampled per round (q = 0.2),
40 rounds, one local epoch of an MLP (64 hidden units), unweighted FedAvg, updates clipped to 1.0,
delta = 1e-3. Every setting runs with three seeds; the table gives the mean final test accuracy and
its range, and the epsilon the run reported (the same for every seed).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from flcore.config import validate_config
from flcore.experiment import Experiment

DOC = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"
BEGIN, END = "<!-- privacy_utility:begin -->", "<!-- privacy_utility:end -->"
NOISE = [0.3, 0.5, 1.0, 2.0]
SEEDS = [0, 1, 2]


def config(seed: int, noise: float | None) -> dict:
    plugins = (
        [] if noise is None else [{"name": "dp_fedavg", "clip_norm": 1.0, "noise_multiplier": noise, "delta": 1e-3}]
    )
    return {
        "name": "privacy-utility",
        "seed": seed,
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [64]},
        "federation": {
            "agents": 200,
            "rounds": 40,
            "sampler": {"name": "uniform", "count": 40},
            "aggregator": {"name": "fedavg", "weighted": False},
            "server_plugins": plugins,
        },
        "training": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1}},
        "evaluation": {"every": 40},
        "logging": {"loggers": [], "profiler": None, "progress": "off", "agent_metrics": False},
        "checkpoint": {"every": 40},
    }


def run(seed: int, noise: float | None, out_dir: str) -> tuple[float, float]:
    result = Experiment(validate_config(config(seed, noise))).run(out_dir=out_dir, progress=False)
    last = result.history[-1]
    return last["test_acc"], last.get("dp_fedavg/epsilon", float("inf"))


def table() -> str:
    lines = [
        "| noise multiplier z | epsilon at delta = 1e-3 | test accuracy (mean, range over 3 seeds) |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for noise in [None, *NOISE]:
            scores = [run(seed, noise, folder) for seed in SEEDS]
            accuracy = [a for a, _ in scores]
            epsilon = scores[0][1]
            name = "no DP (plain FedAvg)" if noise is None else f"{noise:g}"
            shown = "no guarantee" if noise is None else f"{epsilon:.2f}"
            lines.append(
                f"| {name} | {shown} | {statistics.mean(accuracy):.3f} ({min(accuracy):.3f} to {max(accuracy):.3f}) |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into docs/privacy.md")
    args = parser.parse_args()
    text = table()
    if args.write:
        doc = DOC.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        DOC.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))


if __name__ == "__main__":
    main()
