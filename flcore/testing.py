"""Helpers for plugin authors' tests: a tiny experiment, and conformance checks per component kind.

    from flcore.testing import check_aggregator, run_tiny_experiment

    def test_my_aggregator_honours_the_interface():
        check_aggregator("fedmine")

    def test_my_aggregator_learns(tmp_path):
        result = run_tiny_experiment(tmp_path, aggregator="fedmine")
        assert result.history[-1]["test_acc"] > 0.5

Each check resolves the component through the installed plugins, exactly as a config would, and
raises ``AssertionError`` naming what the component got wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from flcore.registry import Registry, discover

TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "dataset": "digits",
    "model": {"name": "mlp", "hidden": [32]},
    "federation": {"agents": 8, "rounds": 3, "sampler": {"name": "uniform", "count": 4}},
    "training": {"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}},
    "logging": {"loggers": ["csv"], "profiler": None, "progress": "off"},
}


def tiny_config(**federation: Any) -> dict[str, Any]:
    """A federated experiment on the embedded digits that runs in about a second; keyword arguments
    replace entries of its ``federation`` section (``aggregator="fedmine"``)."""
    config = copy.deepcopy(TINY_CONFIG)
    config["federation"].update(federation)
    return config


def run_tiny_experiment(out_dir: str | Path, config: dict[str, Any] | None = None, **federation: Any) -> Any:
    """Run :func:`tiny_config` (or ``config``) into ``out_dir`` and return its ``RunResult``."""
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    return Experiment(validate_config(config or tiny_config(**federation))).run(out_dir=out_dir, progress=False)


def build(kind: str, name: str, registry: Registry | None = None, **params: Any) -> Any:
    """Resolve and construct a component (not a model or dataset) with the given parameters."""
    component = (registry or discover()).resolve(kind, name)
    return component.load()(component.params_model()(**params))


def check_aggregator(name: str, registry: Registry | None = None, **params: Any) -> None:
    """Aggregate random updates twice; check shapes, finiteness, determinism and state round-trip."""
    import torch

    from flcore.aggregation import Aggregator, ClientUpdate

    def updates(seed: int) -> list[ClientUpdate]:
        g = torch.Generator().manual_seed(seed)
        return [ClientUpdate(i, torch.randn(17, generator=g), 5 + i) for i in range(6)]

    zeros = torch.zeros(17)
    first = build("aggregator", name, registry, **params)
    assert isinstance(first, Aggregator), f"aggregator '{name}' must subclass flcore.aggregation.Aggregator"
    out = first.aggregate(zeros, _fed(first, updates(0)), 0)
    assert out.shape == (17,) and bool(torch.isfinite(out).all()), f"aggregator '{name}' returned {out}"
    second = build("aggregator", name, registry, **params)
    assert torch.equal(out, second.aggregate(zeros, _fed(second, updates(0)), 0)), \
        f"aggregator '{name}' is not deterministic"
    restored = build("aggregator", name, registry, **params)
    restored.load_state_dict(first.state_dict())
    expected = first.aggregate(out, _fed(first, updates(1)), 1)
    assert torch.allclose(restored.aggregate(out, _fed(restored, updates(1)), 1), expected), \
        f"aggregator '{name}': load_state_dict(state_dict()) does not restore its server state"


def _fed(aggregator: Any, updates: list) -> list:
    """Feed updates the way the engine does: streamed, with deltas dropped, when the aggregator streams."""
    if not aggregator.streaming:
        return updates
    from flcore.aggregation import ClientUpdate

    for update in updates:
        aggregator.accumulate(update)
    return [ClientUpdate(u.agent_id, None, u.num_samples) for u in updates]


def check_sampler(name: str, registry: Registry | None = None, agents: int = 50, **params: Any) -> None:
    """Sample several rounds; check ids are distinct and in range, and choices are seed-deterministic."""
    from flcore.agents import AgentPopulation
    from flcore.partition import Partition

    def population() -> AgentPopulation:
        return _population_with_metadata(Partition.from_shards([np.arange(1 + i % 7) for i in range(agents)]), registry)

    def rounds() -> list[list[int]]:
        sampler, pop = build("sampler", name, registry, **params), population()
        return [np.asarray(sampler.sample(pop, r, np.random.default_rng([0, r]))).tolist() for r in range(5)]

    chosen = rounds()
    for r, ids in enumerate(chosen):
        assert ids, f"sampler '{name}' chose no agent in round {r}"
        assert len(set(ids)) == len(ids), f"sampler '{name}' chose an agent twice in round {r}: {ids}"
        assert all(0 <= i < agents for i in ids), f"sampler '{name}' chose ids outside [0, {agents}): {ids}"
    assert chosen == rounds(), f"sampler '{name}' is not deterministic for a given generator"


def _population_with_metadata(partition: Any, registry: Registry | None) -> Any:
    from flcore.agents import AgentPopulation

    registry = registry or discover()
    fields = [f for c in registry.all("agent_metadata") for f in c.load()(c.params_model()()).fields()]
    return AgentPopulation(partition, fields)


def check_partitioner(name: str, registry: Registry | None = None, agents: int = 7, **params: Any) -> None:
    """Split labels; check the shards are disjoint, in range, one per agent, and seed-deterministic."""
    labels = np.random.default_rng(0).integers(0, 10, size=700)

    def split(seed: int) -> Any:
        return build("partitioner", name, registry, **params).split(labels, agents, np.random.default_rng(seed))

    partition = split(1)
    assert partition.num_agents == agents, f"partitioner '{name}' made {partition.num_agents} shards for {agents} agents"
    indices = partition.indices
    assert len(np.unique(indices)) == len(indices), f"partitioner '{name}' gave a sample to two agents"
    assert len(indices) == 0 or (indices.min() >= 0 and indices.max() < len(labels)), \
        f"partitioner '{name}' returned indices outside the dataset"
    assert np.array_equal(indices, split(1).indices), f"partitioner '{name}' is not deterministic for a seed"
