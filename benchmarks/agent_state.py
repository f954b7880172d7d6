"""Memory of per-agent personal state with 100,000 agents: in memory against the spill policy.

    python benchmarks/agent_state.py                       # 100,000 agents, 1,000 rounds of 100
    python benchmarks/agent_state.py --agents 10000 --rounds 100 --floats 2000   # a quick look

Each round draws a cohort, reads each cohort agent's personal state (a tensor of ``--floats``
floats: a personal model or head, as Ditto and FedPer keep) and writes a new one, and every
``--checkpoint-every`` rounds the population is checkpointed through the run's journal; by the end
nearly every agent holds state. The same rounds run twice, each in a fresh process: with the whole
state in memory (``agent_state_memory_mb`` larger than it), and with the default-sized budget
``--budget-mb``. The script prints each process's peak resident memory, seconds per round, the bytes
on disk, and the ratios. Only flcore's population and checkpoint store run; no model trains, so the
numbers are the policy's own cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_process(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from flcore.agents import AgentField, AgentPopulation
    from flcore.engine.state_store import CheckpointStore
    from flcore.partition import Partition

    folder = Path(args.folder)
    shards = Partition.from_shards([np.array([a]) for a in range(args.agents)])
    population = AgentPopulation(shards, [AgentField("personal_model")])
    population.spill_to(str(folder / ".agent-state-rank-0"), int(args.budget_mb * 2**20))
    store = CheckpointStore(folder / "run")
    rng = np.random.default_rng(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch, flcore, the population
    started = time.perf_counter()
    for r in range(args.rounds):
        for agent in rng.choice(args.agents, size=args.cohort, replace=False).tolist():
            held = population.get("personal_model", agent)
            base = held if held is not None else torch.zeros(args.floats)
            population.set("personal_model", agent, base + 1.0)
        if (r + 1) % args.checkpoint_every == 0:
            store.save({"round": r + 1}, {"agents": args.agents}, population, round_tag=r + 1)
    seconds = time.perf_counter() - started
    holding = len(population.sparse_items("personal_model")) if args.agents <= 20_000 else None
    result = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "start_rss_mb": before,
              "seconds_per_round": seconds / args.rounds,
              "journal_mb": disk_bytes(folder / "run") / 2**20,
              "spill_mb": disk_bytes(folder / ".agent-state-rank-0") / 2**20,
              "agents_holding_state": holding, **population.spill.stats()}
    population.close_spill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1_000)
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--floats", type=int, default=10_000, help="floats of personal state per agent")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--budget-mb", type=float, default=256.0, help="the spill policy's memory budget")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args)))
        return
    state_mb = args.agents * args.floats * 4 / 2**20
    results = {}
    for label, budget in (("in memory", 4 * state_mb + 1024), ("spilled", args.budget_mb)):
        folder = Path(tempfile.mkdtemp(prefix="flcore-agent-state-"))
        try:
            command = [sys.executable, __file__, "--child", "--folder", str(folder), "--budget-mb", str(budget)]
            for name in ("agents", "rounds", "cohort", "floats", "checkpoint_every"):
                command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[label] = json.loads(output.strip().splitlines()[-1])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.agents:,} agents, {args.rounds:,} rounds of {args.cohort}, {args.floats:,} floats "
          f"({args.floats * 4 / 1024:.0f} KiB) of state each, at most {state_mb:,.0f} MiB in all")
    print(f"{'policy':<10} {'start RSS':>10} {'peak RSS':>9} {'growth MiB':>11} {'s/round':>9} {'journal MiB':>12} "
          f"{'spill MiB':>10} {'spilled':>9} {'loaded':>9}")
    for label, r in results.items():
        r["growth_mb"] = r["peak_rss_mb"] - r["start_rss_mb"]
        print(f"{label:<10} {r['start_rss_mb']:>10.0f} {r['peak_rss_mb']:>9.0f} {r['growth_mb']:>11.0f} "
              f"{r['seconds_per_round']:>9.4f} {r['journal_mb']:>12.0f} {r['spill_mb']:>10.0f} "
              f"{r['values_spilled']:>9,} {r['values_loaded']:>9,}")
    memory, spilled = results["in memory"], results["spilled"]
    print(f"memory growth spilled / in memory: {spilled['growth_mb'] / memory['growth_mb']:.3f} "
          f"(budget {args.budget_mb:.0f} MiB); peak RSS ratio {spilled['peak_rss_mb'] / memory['peak_rss_mb']:.3f}; "
          f"time per round spilled / in memory: {spilled['seconds_per_round'] / memory['seconds_per_round']:.2f}x")


if __name__ == "__main__":
    main()
