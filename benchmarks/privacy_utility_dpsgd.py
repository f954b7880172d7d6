"""Privacy against utility for sample-level DP-SGD on the embedded digits: test accuracy and the
worst agent's epsilon for a few noise multipliers of ``dp_sgd``, against the same runs without it.

    python benchmarks/privacy_utility_dpsgd.py            # prints the table
    python benchmarks/privacy_utility_dpsgd.py --write    # also writes it into docs/privacy.md

10 agents share the 1,437 training images (about 144 each, IID), 5 are sampled per round, 20
rounds, one local epoch of an MLP (64 hidden units) in Poisson batches of expected size 16 (q about
0.11, 9 steps an epoch), SGD at lr 0.5, per-sample gradients clipped to 1.0, delta = 1e-4 (below 1 /
training samples). The agents train on the vectorized backend (DP-SGD's per-sample gradients
vmapped over the cohort). Every setting runs with three seeds; the table gives the mean final test
accuracy and its range, and the largest epsilon the three runs reported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from flcore.config import validate_config
from flcore.experiment import Experiment

DOC = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"
BEGIN, END = "<!-- privacy_utility_dpsgd:begin -->", "<!-- privacy_utility_dpsgd:end -->"
NOISE = [0.0, 0.7, 1.0, 1.5, 2.0, 3.0]
SEEDS = [0, 1, 2]


def config(seed: int, noise: float | None) -> dict:
    plugins = [] if noise is None else [{"name": "dp_sgd", "clip_norm": 1.0, "noise_multiplier": noise,
                                         "delta": 1e-4}]
    return {
        "name": "privacy-utility-dpsgd",
        "seed": seed,
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [64]},
        "federation": {
            "agents": 10,
            "rounds": 20,
            "sampler": {"name": "uniform", "count": 5},
            "aggregator": {"name": "fedavg"},
            "agent_plugins": plugins,
            "backend": {"name": "vectorized", "strict": True},
        },
        "training": {"epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.5}},
        "evaluation": {"every": 20},
        "logging": {"loggers": [], "profiler": None, "progress": "off", "agent_metrics": False},
        "checkpoint": {"every": 20},
    }


def run(seed: int, noise: float | None, out_dir: str) -> tuple[float, float]:
    result = Experiment(validate_config(config(seed, noise))).run(out_dir=out_dir, progress=False)
    last = result.history[-1]
    return last["test_acc"], last.get("dp_sgd/epsilon", float("inf"))


def table() -> str:
    lines = [
        "| noise multiplier z | worst agent's epsilon at delta = 1e-4 | test accuracy (mean, range over 3 seeds) |",
        "|---|---|---|",
    ]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for noise in [None, *NOISE]:
            scores = [run(seed, noise, folder) for seed in SEEDS]
            accuracy = [a for a, _ in scores]
            epsilon = max(e for _, e in scores)
            name = "no DP (plain local SGD)" if noise is None else f"{noise:g}"
            shown = "no guarantee" if noise is None or noise == 0 else f"{epsilon:.2f}"
            if noise == 0:
                name = "0 (clipping only)"
            lines.append(
                f"| {name} | {shown} | {statistics.mean(accuracy):.3f} ({min(accuracy):.3f} to {max(accuracy):.3f}) |"
            )
            print(lines[-1], flush=True)
    print(f"{time.perf_counter() - started:.0f} s", flush=True)
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
