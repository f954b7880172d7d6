"""The benchmark workloads (E1, E2, E3) and their plain-PyTorch baseline.

Synthetic data of the right shapes stands in for MNIST and CIFAR-10: timing does not depend on the
pixels. The baseline is the fastest honest hand-written loop: one model and one optimizer reused for
every agent, batches sliced from tensors, FedAvg as a weighted sum, no framework.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from flcore import hookimpl
from flcore.data import ArrayDataModule
from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


@dataclass
class Workload:
    name: str
    shape: tuple[int, int, int]
    train_samples: int
    test_samples: int
    agents: int
    shard: int
    sampled: int
    batch_size: int
    lr: float
    rounds: int
    eval_every: int
    model: dict[str, Any] = field(default_factory=dict)
    agent_plugins: tuple[dict[str, Any], ...] = ()  # federation.agent_plugins (DP-SGD, say)


E1 = Workload("E1", (1, 28, 28), 60_000, 10_000, 100, 600, 10, 32, 0.01, 5, 1, {"name": "lenet5"})
E2 = Workload("E2", (3, 32, 32), 50_000, 10_000, 1_000, 50, 50, 10, 0.1, 10, 10,
              {"name": "cnn", "channels": [32, 64], "kernel_size": 5, "hidden": 512})


def e3(agents: int) -> Workload:
    return Workload(f"E3-{agents}", E1.shape, E1.train_samples, E1.test_samples, agents, 600, 10, 32, 0.01, 5, 1,
                    {"name": "lenet5"})


# ------------------------------------------------------------------------------------ data plugin
class SyntheticImagesParams(ComponentParams):
    shape: tuple[int, int, int] = (1, 28, 28)
    train_samples: int = 60_000
    test_samples: int = 10_000
    classes: int = 10


def synthetic_images(params: SyntheticImagesParams) -> ArrayDataModule:
    """Random uint8 images and labels of the workload's shape."""
    g = torch.Generator().manual_seed(0)
    def images(n):
        return torch.randint(0, 256, (n, *params.shape), generator=g, dtype=torch.uint8)
    def labels(n):
        return torch.randint(0, params.classes, (n,), generator=g)
    return ArrayDataModule("synthetic-images", (images(params.train_samples), labels(params.train_samples)),
                           (images(params.test_samples), labels(params.test_samples)), params.classes,
                           transform=lambda x: x.float().div_(255))


class CyclicParams(ComponentParams):
    shard: int = 600


class CyclicPartition(Partition):
    """Agent ``k`` holds ``shard`` consecutive samples starting at ``k * shard`` (mod N), computed on
    demand: 100,000 agents of 600 samples each without storing 60 million indices."""

    def __init__(self, num_agents: int, shard: int, total: int) -> None:
        super().__init__(np.zeros(0, np.int64), np.zeros(num_agents + 1, np.int64))
        object.__setattr__(self, "_shape", (num_agents, shard, total))

    @property
    def num_agents(self) -> int:
        return self._shape[0]

    @property
    def sizes(self) -> np.ndarray:
        return np.full(self._shape[0], self._shape[1], dtype=np.int64)

    def shard(self, agent: int) -> np.ndarray:
        _, shard, total = self._shape
        return (np.arange(shard, dtype=np.int64) + agent * shard) % total

    def statistics(self, labels, num_classes):
        return {"agents": float(self._shape[0]), "samples_per_agent": float(self._shape[1])}


class Cyclic(Partitioner):
    Params = CyclicParams

    def split(self, labels, num_agents, rng, groups=None):
        return CyclicPartition(num_agents, self.params.shard, len(labels))


class BenchPlugin:
    @staticmethod
    @hookimpl
    def register_datasets(register):
        register("synthetic_images", synthetic_images, "Random images of a given shape (benchmarks).")

    @staticmethod
    @hookimpl
    def register_partitioners(register):
        register("cyclic", Cyclic, "Overlapping consecutive shards computed on demand (benchmarks).")


def flcore_config(w: Workload, backend: str = "sequential") -> dict[str, Any]:
    return {
        "name": w.name,
        "seed": 0,
        "dataset": {"name": "synthetic_images", "shape": list(w.shape), "train_samples": w.train_samples,
                    "test_samples": w.test_samples},
        "model": w.model,
        "federation": {"agents": w.agents, "rounds": w.rounds, "partitioner": {"name": "cyclic", "shard": w.shard},
                       "sampler": {"name": "uniform", "count": w.sampled}, "aggregator": "fedavg",
                       "agent_plugins": [dict(p) for p in w.agent_plugins], "backend": backend},
        "training": {"epochs": 1, "batch_size": w.batch_size, "optimizer": {"name": "sgd", "lr": w.lr}},
        "evaluation": {"every": w.eval_every, "batch_size": 1000},
        "logging": {"loggers": [], "profiler": None, "progress": "off", "agent_metrics": False},
        "checkpoint": {"every": 1},
    }


# ------------------------------------------------------------------------------------ baseline
def baseline_rounds(w: Workload, net: nn.Module, data: ArrayDataModule) -> list[float]:
    """Seconds of each round of the hand-written loop: sample, train each agent, FedAvg, evaluate."""
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=w.lr)
    global_state = [p.detach().clone() for p in params]
    x, y = data.x_train, data.y_train
    rng = np.random.default_rng(0)
    times = []
    for r in range(w.rounds):
        start = time.perf_counter()
        chosen = rng.choice(w.agents, size=w.sampled, replace=False)
        total = [torch.zeros_like(p) for p in params]
        for agent in chosen:
            with torch.no_grad():
                for p, g in zip(params, global_state):
                    p.copy_(g)
            optimizer.state.clear()
            shard = torch.from_numpy((np.arange(w.shard) + agent * w.shard) % len(y))
            order = shard[torch.randperm(len(shard))]
            net.train()
            for s in range(0, len(order), w.batch_size):
                idx = order[s : s + w.batch_size]
                loss = nn.functional.cross_entropy(net(x[idx].float().div_(255)), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                for t, p in zip(total, params):
                    t.add_(p, alpha=1.0 / w.sampled)
        with torch.no_grad():
            for g, t in zip(global_state, total):
                g.copy_(t)
        if (r + 1) % w.eval_every == 0 or r + 1 == w.rounds:
            with torch.inference_mode():
                for p, g in zip(params, global_state):
                    p.copy_(g)
                net.eval()
                correct = 0
                for s in range(0, len(data.y_test), 1000):
                    correct += int((net(data.x_test[s : s + 1000].float().div_(255)).argmax(1) == data.y_test[s : s + 1000]).sum())
        times.append(time.perf_counter() - start)
    return times
