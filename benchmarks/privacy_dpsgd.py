"""The cost of sample-level DP-SGD (``dp_sgd``) against plain local SGD: E1's local training
(LeNet-5, 600 MNIST-shaped samples an agent, batch 32, one local epoch) with and without the
plugin (on the sequential backend, and on the vectorized one), interleaved in one run, as seconds
per round and their ratio.

    python benchmarks/privacy_dpsgd.py            # 2 agents a round, 4 rounds per run, 2 runs per variant
    python benchmarks/privacy_dpsgd.py 10 3 1     # agents per round, rounds per run, runs per variant

DP-SGD's round differs from the plain one in three ways, all measured here: per-sample gradients
(``torch.func``'s ``vmap(grad)``) instead of one backward, clipping and noise on every step, and
Poisson-sampled batches (the same expected size, so the same number of samples an epoch). The
global model is evaluated only after the last round, so that a round's time is local training,
aggregation and the accountant. The first round of each run is a warm-up and is left out, and so
is the last (it evaluates). Both wall seconds and the process's CPU seconds (one thread) are
reported: on a shared machine the CPU seconds are the steadier measure.
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
from workloads import E1, BenchPlugin, flcore_config  # noqa: E402

from flcore import hookimpl  # noqa: E402
from flcore.config import validate_config  # noqa: E402
from flcore.experiment import Experiment  # noqa: E402
from flcore.registry import discover  # noqa: E402
from flcore.server_plugin import ServerPlugin  # noqa: E402

DP_SGD = [{"name": "dp_sgd", "clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-6}]
#: name: (agent plugins, backend); the vectorized one trains the round's agents in one nested vmap
VARIANTS = {
    "local sgd": ([], "sequential"),
    "dp_sgd": (DP_SGD, "sequential"),
    "dp_sgd vectorized": (DP_SGD, {"name": "vectorized", "strict": True}),
}


class CpuClock(ServerPlugin):
    """Logs the process's CPU seconds at the end of every round: a round's CPU time is the
    difference, which other processes on a shared machine do not inflate as they do wall time."""

    def on_round_end(self, context, accepted):
        context.log(self, "seconds", time.process_time())


class ClockPlugin:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("cpu_clock", CpuClock, "The process's CPU seconds at each round's end (benchmarks).")


def config(agents: int, rounds: int, agent_plugins: list, backend: object = "sequential") -> dict:
    data = flcore_config(E1)
    data["federation"].update(rounds=rounds, sampler={"name": "uniform", "count": agents},
                              agent_plugins=agent_plugins, backend=backend)
    data["evaluation"]["every"] = rounds
    data["federation"]["server_plugins"] = ["cpu_clock"]
    return data


def main(agents: int, rounds: int, repeats: int) -> None:
    torch.set_num_threads(1)  # one thread: CPU seconds are then the work itself
    registry = discover(extra_plugins=[("bench", BenchPlugin), ("clock", ClockPlugin)])
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"numpy {np.__version__}; E1's local training, {agents} agents a round, {rounds} rounds x {repeats} runs "
          "per variant")
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            for name, (plugins, backend) in VARIANTS.items():
                history = Experiment(validate_config(config(agents, rounds, plugins, backend)), registry=registry).run(
                    out_dir=folder, progress=False).history
                clock = [row["cpu_clock/seconds"] for row in history]
                # rounds 2 .. rounds - 1: the first is a warm-up, the last also evaluates
                timed = range(1, rounds - 1) if rounds > 2 else range(1, rounds)
                wall[name] += [history[r]["seconds"] for r in timed]
                cpu[name] += [clock[r] - clock[r - 1] for r in timed]
    base_wall, base_cpu = statistics.median(wall["local sgd"]), statistics.median(cpu["local sgd"])
    print(f"{'variant':<18s} {'rounds timed':>12s} {'median wall s/round':>20s} {'x local sgd':>12s} "
          f"{'median CPU s/round':>19s} {'x local sgd':>12s}")
    for name in VARIANTS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<18s} {len(wall[name]):12d} {w:20.3f} {w / base_wall:12.2f} {c:19.3f} {c / base_cpu:12.2f}",
              flush=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*(args + [2, 4, 2][len(args):]))
