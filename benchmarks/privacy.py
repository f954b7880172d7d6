"""The cost of user-level DP-FedAvg: E1's round with ``dp_fedavg`` (fixed and adaptive clipping)
against the same round without it, as ratios measured in the same run.

    python benchmarks/privacy.py            # E1, 3 rounds per run, 4 runs per variant
    python benchmarks/privacy.py 2 1        # rounds per run, runs per variant

The round is E1's (LeNet-5, 100 agents, 10 sampled, 600 MNIST-shaped samples each, 1 local epoch,
batch 32, evaluation every round), with unweighted FedAvg in every variant, so that the only
difference is the plugin: clipping each update, noise on the sum, the accountant's epsilon. The
variants run interleaved, so that drift on a shared machine hits all of them; a round's time is the
median of the rounds' ``seconds`` after each run's first (warm-up: it also computes the
accountant's RDP curve for the run's sampling rate, once per run).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from flcore_plugins.server_plugins.dp_fedavg import DPFedAvg  # noqa: E402
from workloads import E1, BenchPlugin, flcore_config  # noqa: E402

from flcore import hookimpl  # noqa: E402
from flcore.config import validate_config  # noqa: E402
from flcore.experiment import Experiment  # noqa: E402
from flcore.registry import discover  # noqa: E402

SPENT: list[float] = []  # seconds per round inside the plugin's steps, after each run's first round


class TimedDPFedAvg(DPFedAvg):
    """``dp_fedavg``, timing its own steps."""

    _spent = 0.0

    def _timed(self, step, *args):
        started = time.perf_counter()
        step(*args)
        self._spent += time.perf_counter() - started

    def process_update(self, context, update):
        self._timed(super().process_update, context, update)

    def process_sum(self, context, total):
        self._timed(super().process_sum, context, total)

    def on_round_end(self, context, accepted):
        self._timed(super().on_round_end, context, accepted)
        if context.index > 0:
            SPENT.append(self._spent)
        self._spent = 0.0


class TimedPlugin:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("timed_dp_fedavg", TimedDPFedAvg, "dp_fedavg timing its own steps (benchmarks).")


DP = {"name": "timed_dp_fedavg", "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-3}
VARIANTS = {
    "fedavg": [],
    "dp_fedavg": [DP],
    "dp_fedavg adaptive": [DP | {"target_quantile": 0.5, "count_noise": 1.0}],
}


def config(rounds: int, server_plugins: list) -> dict:
    data = flcore_config(E1)
    data["federation"].update(
        rounds=rounds, aggregator={"name": "fedavg", "weighted": False}, server_plugins=server_plugins
    )
    return data


def round_seconds(rounds: int, server_plugins: list, registry, out_dir: str) -> list[float]:
    result = Experiment(validate_config(config(rounds, server_plugins)), registry=registry).run(
        out_dir=out_dir, progress=False
    )
    return [row["seconds"] for row in result.history[1:]]


def main(rounds: int, repeats: int) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    registry = discover(extra_plugins=[("bench", BenchPlugin), ("timed", TimedPlugin)])
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"numpy {np.__version__}; E1, {rounds} rounds x {repeats} runs per variant"
    )
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    spent: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for name, plugins in VARIANTS.items():
                SPENT.clear()
                times[name] += round_seconds(rounds, plugins, registry, folder)
                spent[name] += SPENT
    base = statistics.median(times["fedavg"])
    print(
        f"{'variant':<20s} {'rounds':>6s} {'median s/round':>15s} {'x fedavg':>9s} {'plugin ms':>10s} "
        f"{'1 + plugin / fedavg round':>26s}"
    )
    for name, seconds in times.items():
        median = statistics.median(seconds)
        plugin = statistics.median(spent[name]) if spent[name] else 0.0
        print(
            f"{name:<20s} {len(seconds):6d} {median:15.3f} {median / base:9.3f} {plugin * 1e3:10.2f} "
            f"{1 + plugin / base:26.4f}",
            flush=True,
        )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [3, 4][len(args) :]))
