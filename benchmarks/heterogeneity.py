"""Availability and timing at scale: a round with 1,000,000 registered agents and an availability
trace against the same round with 1,000, as a ratio measured in the same run.

    python benchmarks/heterogeneity.py                 # 1,000 against 1,000,000 agents
    python benchmarks/heterogeneity.py 1000 100000     # other sizes: the first is the baseline

The round is E1's (LeNet-5, 10 sampled agents of 600 MNIST-shaped samples, 1 local epoch, batch
32, evaluation every round), plus what this measures: a trace of three online intervals per agent
and day (``availability: trace``, periodic), per-agent speeds drawn from log-normals
(``device_profile: drawn``) and a reporting deadline (``round_policy: deadline``). Each size runs
twice; a round's time is the median of the rounds' ``seconds`` after the first (warm-up) of both
runs. The trace files are written before timing starts; reading them is set-up, not a round.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from workloads import BenchPlugin, e3, flcore_config  # noqa: E402

from flcore.config import validate_config  # noqa: E402
from flcore.experiment import Experiment  # noqa: E402
from flcore.registry import discover  # noqa: E402

DAY = 86400.0
ROUNDS = 6


def write_trace(path: Path, agents: int, seed: int = 0) -> int:
    """Three online intervals a day per agent, at random times; returns the number of lines."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.uniform(0, DAY, (agents, 6)), axis=1)
    starts, ends = cuts[:, 0::2].ravel(), cuts[:, 1::2].ravel()
    ids = np.repeat(np.arange(agents), 3)
    keep = ends > starts
    table = np.column_stack([ids[keep], starts[keep], ends[keep], np.full(keep.sum(), DAY)])
    with path.open("w") as handle:
        handle.write("agent,start,end,period\n")
        np.savetxt(handle, table, fmt=["%d", "%.3f", "%.3f", "%.0f"], delimiter=",")
    return int(keep.sum())


def config(agents: int, trace: Path) -> dict:
    data = flcore_config(e3(agents))
    data["federation"].update(
        rounds=ROUNDS,
        availability={"name": "trace", "path": str(trace)},
        device_profile={"name": "drawn"},
        round_policy={"name": "deadline", "deadline": 120.0, "late": "keep_partial", "server_seconds": 600.0},
    )
    return data


def round_seconds(agents: int, trace: Path, registry, out_dir: str) -> tuple[list[float], float]:
    started = time.perf_counter()
    result = Experiment(validate_config(config(agents, trace)), registry=registry).run(out_dir=out_dir, progress=False)
    rows = result.history
    setup = time.perf_counter() - started - sum(row["seconds"] for row in rows)
    return [row["seconds"] for row in rows[1:]], setup


def main(sizes: list[int]) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    registry = discover(extra_plugins=[("bench", BenchPlugin)])
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print(f"{'agents':>10s} {'trace lines':>12s} {'s/round':>9s} {'set-up s':>9s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as folder:
        traces = {n: Path(folder) / f"trace-{n}.csv" for n in sizes}
        lines = {n: write_trace(traces[n], n) for n in sizes}
        times: dict[int, list[float]] = {n: [] for n in sizes}
        setup: dict[int, float] = {}
        for _ in range(2):  # alternate the sizes, so that drift on a shared machine hits both
            for n in sizes:
                rounds, setup[n] = round_seconds(n, traces[n], registry, folder)
                times[n] += rounds
        base = statistics.median(times[sizes[0]])
        for n in sizes:
            median = statistics.median(times[n])
            print(f"{n:10,d} {lines[n]:12,d} {median:9.3f} {setup[n]:9.2f} {median / base:6.2f}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000, 1_000_000])
