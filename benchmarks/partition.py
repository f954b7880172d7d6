"""Partitioner speed: 1,000,000 labels into 10,000 agents.

Baseline, in the same run: one NumPy sort of the labels (the least a label-aware split must do).
Prints each partitioner's seconds and its ratio to that sort.

    python benchmarks/partition.py
"""

from __future__ import annotations

import time

import numpy as np

from flcore.registry import discover


def timed(fn) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1_000_000)
    agents = 10_000
    baseline = timed(lambda: np.argsort(labels, kind="stable"))
    print(f"{'partitioner':16s} {'seconds':>8s} {'x sort':>7s}")
    print(f"{'(np.argsort)':16s} {baseline:8.3f} {1.0:7.2f}")
    registry = discover()
    for name, params in [("iid", {}), ("niid", {"niid_factor": 2}), ("k_classes", {"k": 2}),
                         ("dirichlet", {"alpha": 0.5, "min_samples": 0}), ("quantity_skew", {})]:
        component = registry.resolve("partitioner", name)
        partitioner = component.load()(component.params_model()(**params))
        seconds = timed(lambda p=partitioner: p.split(labels, agents, np.random.default_rng(0)))
        print(f"{name:16s} {seconds:8.3f} {seconds / baseline:7.2f}")


if __name__ == "__main__":
    main()
