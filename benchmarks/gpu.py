"""The vectorized backend against the sequential one on one device, in one process.

    python benchmarks/gpu.py --bf16 --json gpu.json      # on a GPU machine: E1, E2, E2-500, E1-DPSGD
    python benchmarks/gpu.py E1 --rounds 3               # a subset, fewer rounds
    python benchmarks/gpu.py --tiny --device cpu         # seconds on a CPU (the smoke test's setting)

For each workload flcore runs with ``backend: sequential`` and then ``backend: vectorized`` (chunked
to the device's memory as it measures), and the script prints seconds per round (the median over
rounds after the first), the speed-up sequential / vectorized, each run's peak device memory
(CUDA: ``max_memory_allocated`` over the run; CPU: the process's peak resident set so far), the
vectorized chunk size, the largest weight difference between the two final models, and the device
name. ``--bf16`` also runs vectorized under ``bf16-mixed`` and checks its test accuracy against fp32.

The data are the workloads' random images (benchmarks/workloads.py) labelled by a fixed random
linear teacher on 4x4-pooled pixels, so that accuracy, and the bf16 check, mean something; timing
does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import replace
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from workloads import E1, E2, BenchPlugin, SyntheticImagesParams, Workload, flcore_config, synthetic_images  # noqa: E402

from flcore import hookimpl  # noqa: E402
from flcore.config import validate_config  # noqa: E402
from flcore.data import ArrayDataModule  # noqa: E402
from flcore.experiment import Experiment  # noqa: E402
from flcore.registry import discover  # noqa: E402

#: |test accuracy (bf16) - test accuracy (fp32)| beyond which the bf16 check reports a problem
BF16_TOLERANCE = 0.02
#: never a silent fallback to sequential: a benchmark of the wrong backend would be worse than none
VECTORIZED = {"name": "vectorized", "strict": True}


def teacher_images(params: SyntheticImagesParams) -> ArrayDataModule:
    """The workloads' random images, labelled by the argmax of a fixed random linear map of their
    4x4-pooled pixels: a task the workloads' models can learn."""
    data = synthetic_images(params)
    channels, height, width = params.shape
    teacher = torch.randn(channels * (height // 4) * (width // 4), params.classes,
                          generator=torch.Generator().manual_seed(1))

    def label(images: torch.Tensor) -> torch.Tensor:
        pooled = [torch.nn.functional.avg_pool2d(chunk.float() - 127.5, 4).flatten(1) for chunk in images.split(4096)]
        return torch.cat([p @ teacher for p in pooled]).argmax(dim=1)

    return ArrayDataModule("teacher-images", (data.x_train, label(data.x_train)), (data.x_test, label(data.x_test)),
                           params.classes, transform=lambda x: x.float().div_(255))


class TeacherPlugin:
    @staticmethod
    @hookimpl
    def register_datasets(register):
        register("teacher_images", teacher_images, "Random images labelled by a linear teacher (benchmarks).")


#: sample-level DP-SGD in every agent (per-sample gradients: the vectorized backend's nested vmap)
DP_SGD = ({"name": "dp_sgd", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-6},)


def workloads(tiny: bool) -> dict[str, Workload]:
    """E1, E2, E2 with 500 agents per round, and E1 with DP-SGD; ``tiny``: the same shapes of work, a
    few seconds on a CPU."""
    e2_500 = replace(E2, name="E2-500", sampled=500)
    if not tiny:
        return {"E1": E1, "E2": E2, "E2-500": e2_500, "E1-DPSGD": replace(E1, name="E1-DPSGD", agent_plugins=DP_SGD)}
    small_cnn = {"name": "cnn", "channels": [4, 8], "kernel_size": 5, "hidden": 16}
    small_e2 = dict(train_samples=200, test_samples=100, agents=24, shard=8, batch_size=4, rounds=2, eval_every=1,
                    model=small_cnn)
    small_e1 = replace(E1, train_samples=256, test_samples=100, agents=8, shard=32, sampled=3, batch_size=16, rounds=2)
    return {
        "E1": small_e1,
        "E2": replace(E2, sampled=4, **small_e2),
        "E2-500": replace(E2, name="E2-500", sampled=12, **small_e2),
        "E1-DPSGD": replace(small_e1, name="E1-DPSGD", agent_plugins=DP_SGD),
    }


def config_for(w: Workload, backend: Any, device: str, precision: str) -> dict[str, Any]:
    config = flcore_config(w, backend)
    config["dataset"]["name"] = "teacher_images"
    config["runtime"] = {"accelerator": device, "precision": precision}
    config["checkpoint"] = {"every": w.rounds}  # the backends are measured, not the checkpoint writer
    return config


def run_once(w: Workload, backend: Any, device: str, precision: str, registry: Any, out_dir: str) -> dict[str, Any]:
    """One run: seconds per round, peak memory, final test metrics and weights."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = Experiment(validate_config(config_for(w, backend, device, precision)), registry=registry).run(
        out_dir=out_dir, progress=False)
    rows = result.history
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = max(r.get("memory/peak_rss_mib", float("nan")) for r in rows)
    final = rows[-1]
    return {"seconds_per_round": statistics.median(r["seconds"] for r in rows[1:] or rows), "peak_mib": peak,
            "test_acc": final.get("test_acc"), "test_loss": final.get("test_loss"),
            "chunk_size": final.get("vectorized/chunk_size"), "state": result.state_dict}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def measure(selected: list[str], device: str, tiny: bool, rounds: int | None, bf16: bool) -> dict[str, Any]:
    registry = discover(extra_plugins=[("bench", BenchPlugin), ("gpu", TeacherPlugin)])
    report: dict[str, Any] = {"device": device, "device_name": device_name(device), "torch": torch.__version__,
                              "rows": [], "bf16": []}
    chosen = workloads(tiny)
    with tempfile.TemporaryDirectory() as out_dir:
        for key in selected or list(chosen):
            w = chosen[key] if rounds is None else replace(chosen[key], rounds=rounds)
            sequential = run_once(w, "sequential", device, "32-true", registry, out_dir)
            vectorized = run_once(w, VECTORIZED, device, "32-true", registry, out_dir)
            row = {"workload": w.name, "agents_per_round": w.sampled, "rounds": w.rounds,
                   "sequential_s": sequential["seconds_per_round"], "vectorized_s": vectorized["seconds_per_round"],
                   "speedup": sequential["seconds_per_round"] / vectorized["seconds_per_round"],
                   "sequential_peak_mib": sequential["peak_mib"], "vectorized_peak_mib": vectorized["peak_mib"],
                   "chunk_size": vectorized["chunk_size"], "sequential_test_acc": sequential["test_acc"],
                   "vectorized_test_acc": vectorized["test_acc"],
                   "max_weight_difference": max_difference(sequential["state"], vectorized["state"])}
            report["rows"].append(row)
            print_row(row, first=len(report["rows"]) == 1)
            if bf16 and not w.agent_plugins:  # DP-SGD's per-sample clipping runs in 32-bit precision only
                half = run_once(w, VECTORIZED, device, "bf16-mixed", registry, out_dir)
                check = {"workload": w.name, "bf16_s": half["seconds_per_round"],
                         "speedup_over_fp32": vectorized["seconds_per_round"] / half["seconds_per_round"],
                         "bf16_peak_mib": half["peak_mib"], "fp32_test_acc": vectorized["test_acc"],
                         "bf16_test_acc": half["test_acc"], "fp32_test_loss": vectorized["test_loss"],
                         "bf16_test_loss": half["test_loss"],
                         "accuracy_ok": abs(half["test_acc"] - vectorized["test_acc"]) <= BF16_TOLERANCE}
                report["bf16"].append(check)
    if report["bf16"]:
        print_bf16(report["bf16"])
    return report


def print_row(row: dict[str, Any], first: bool) -> None:
    if first:
        print(f"{'workload':8s} {'agents/round':>12s} {'sequential s/round':>19s} {'vectorized s/round':>19s} "
              f"{'speed-up':>9s} {'seq peak MiB':>13s} {'vec peak MiB':>13s} {'chunk':>6s} {'max |dw|':>9s}")
    print(f"{row['workload']:8s} {row['agents_per_round']:12d} {row['sequential_s']:19.3f} {row['vectorized_s']:19.3f} "
          f"{row['speedup']:9.2f} {row['sequential_peak_mib']:13.0f} {row['vectorized_peak_mib']:13.0f} "
          f"{row['chunk_size']:6.0f} {row['max_weight_difference']:9.1e}", flush=True)


def print_bf16(checks: list[dict[str, Any]]) -> None:
    print(f"\nbf16-mixed (vectorized) against fp32; accuracy ok within {BF16_TOLERANCE}")
    print(f"{'workload':8s} {'bf16 s/round':>13s} {'x fp32':>7s} {'peak MiB':>9s} {'fp32 acc':>9s} {'bf16 acc':>9s} "
          f"{'ok':>4s}")
    for c in checks:
        print(f"{c['workload']:8s} {c['bf16_s']:13.3f} {c['speedup_over_fp32']:7.2f} {c['bf16_peak_mib']:9.0f} "
              f"{c['fp32_test_acc']:9.3f} {c['bf16_test_acc']:9.3f} {'yes' if c['accuracy_ok'] else 'NO':>4s}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", help="E1, E2, E2-500, E1-DPSGD (default: all four)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the workload's)")
    parser.add_argument("--bf16", action="store_true", help="also run vectorized under bf16-mixed and check accuracy")
    parser.add_argument("--tiny", action="store_true", help="a few seconds' setting of the same workloads (CPU test)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.workloads) - {"E1", "E2", "E2-500"})
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}: choose among E1, E2, E2-500")
    print(f"# {device_name(args.device)} ({args.device}), torch {torch.__version__}", flush=True)
    report = measure(args.workloads, args.device, args.tiny, args.rounds, args.bf16)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
