"""E1 as whole processes: ``flcore run`` beside a plain-PyTorch script, interleaved pairs.

    python benchmarks/process.py            # 11 pairs
    python benchmarks/process.py --pairs 25

``benchmarks/run.py`` times rounds inside one process; this times what a user waits for: start-up,
imports, loading MNIST-format IDX files with torchvision, 5 rounds (10 of 100 agents, 600 samples
each, LeNet-5, batch 32, SGD 0.01), evaluation each round, and for flcore its run folder, metrics and
checkpoints. The baseline script is the fastest honest hand-written equivalent (one model and one
optimizer reused, batches sliced from tensors). Random pixels stand in for MNIST: time does not
depend on them. Prints the median of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dataset_files import mnist_like  # noqa: E402

ROUNDS, AGENTS, SAMPLED, SHARD, BATCH, LR = 5, 100, 10, 600, 32, 0.01

BASELINE = r'''
import sys, numpy as np, torch
from torch import nn
from torchvision import datasets
root, rounds, agents, sampled, shard, batch, lr = sys.argv[1], *map(int, sys.argv[2:7]), float(sys.argv[7])
train, test = (datasets.MNIST(root, train=t) for t in (True, False))
x, y = train.data.unsqueeze(1), train.targets
xt, yt = test.data.unsqueeze(1), test.targets
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                    nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                    nn.Linear(84, 10))
params = list(net.parameters())
optimizer = torch.optim.SGD(params, lr=lr)
global_state = [p.detach().clone() for p in params]
rng = np.random.default_rng(0)
perm = torch.from_numpy(rng.permutation(len(y)))
for r in range(rounds):
    total = [torch.zeros_like(p) for p in params]
    for agent in rng.choice(agents, size=sampled, replace=False):
        with torch.no_grad():
            for p, g in zip(params, global_state):
                p.copy_(g)
        optimizer.state.clear()
        own = perm[agent * shard:(agent + 1) * shard]
        order = own[torch.randperm(len(own))]
        net.train()
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            loss = nn.functional.cross_entropy(net(x[idx].float().div_(255)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            for t, p in zip(total, params):
                t.add_(p, alpha=1.0 / sampled)
    with torch.no_grad():
        for g, t in zip(global_state, total):
            g.copy_(t)
    with torch.inference_mode():
        for p, g in zip(params, global_state):
            p.copy_(g)
        net.eval()
        correct = sum(int((net(xt[s:s + 1000].float().div_(255)).argmax(1) == yt[s:s + 1000]).sum())
                      for s in range(0, len(yt), 1000))
print(correct / len(yt))
'''


def flcore_config(root: Path) -> dict:
    return {
        "name": "e1-process", "seed": 0,
        "dataset": {"name": "mnist", "root": str(root)},
        "model": {"name": "lenet5"},
        "federation": {"agents": AGENTS, "rounds": ROUNDS, "partitioner": "iid",
                       "sampler": {"name": "uniform", "count": SAMPLED}, "aggregator": "fedavg"},
        "training": {"epochs": 1, "batch_size": BATCH, "optimizer": {"name": "sgd", "lr": LR}},
        "evaluation": {"every": 1, "batch_size": 1000},
    }


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=11)
    args = parser.parse_args()
    env = dict(os.environ, CI="", PYTHONWARNINGS="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mnist_like(work / "data", "MNIST", AGENTS * SHARD, 10_000, rng=np.random.default_rng(0))
        config = work / "e1.yaml"
        config.write_text(yaml.safe_dump(flcore_config(work / "data")))
        script = work / "baseline.py"
        script.write_text(BASELINE)
        flcore = [sys.executable, "-m", "flcore.cli", "run", str(config), "--out", str(work / "runs"), "--quiet"]
        baseline = [sys.executable, str(script), str(work / "data"),
                    *map(str, (ROUNDS, AGENTS, SAMPLED, SHARD, BATCH)), str(LR)]
        timed(flcore, env), timed(baseline, env)  # warm the page cache
        times: dict[str, list[float]] = {"baseline": [], "flcore": []}
        for pair in range(args.pairs):
            order = [("baseline", baseline), ("flcore", flcore)]
            for kind, command in order if pair % 2 == 0 else order[::-1]:
                times[kind].append(timed(command, env))
    base, ours = statistics.median(times["baseline"]), statistics.median(times["flcore"])
    print(f"E1 as processes, median of {args.pairs} interleaved pairs, {os.cpu_count()} cores")
    print(f"baseline {base:.2f} s   flcore run {ours:.2f} s   ratio {ours / base:.3f}")


if __name__ == "__main__":
    main()
