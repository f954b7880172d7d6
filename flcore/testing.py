"""Helpers for plugin authors' tests: a tiny experiment, a round context, and conformance checks for
every kind of component.

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
from typing import Any, Sequence

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
    replace entries of its ``federation`` section (``aggregator="fedmine"``,
    ``agent_plugins=["mine"]``, ``backend="vectorized"``)."""
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
    built = component.load()(component.params_model()(**params))
    built.component_name = component.name
    return built


def round_context(index: int = 0, agents: int = 10, dim: int = 17, seed: int = 0, lr: float = 0.1,
                  failures: Sequence[Any] = ()) -> Any:
    """A :class:`flcore.protocol.RoundContext` for unit tests of server-side components: ``agents``
    agents holding one sample each, a zero global vector of ``dim`` values."""
    import torch

    from flcore.agents import AgentPopulation
    from flcore.partition import Partition
    from flcore.protocol import RoundContext

    population = AgentPopulation(Partition.from_shards([np.array([a]) for a in range(agents)]))
    return RoundContext(index, index + 1, seed, population, torch.zeros(dim), lr=lr, failures=list(failures))


def _updates(seed: int, dim: int = 17, count: int = 6) -> list[Any]:
    import torch

    from flcore.protocol import AgentResult

    g = torch.Generator().manual_seed(seed)
    return [AgentResult(i, torch.randn(dim, generator=g), 5 + i, steps=3 + i) for i in range(count)]


def _fed(aggregator: Any, updates: list) -> list:
    """Feed updates the way the engine does: streamed, with deltas dropped, when the aggregator streams."""
    if not aggregator.streaming:
        return updates
    for update in updates:
        aggregator.accumulate(update)
        update.delta = None
    return updates


def _vector(out: Any) -> Any:
    from flcore.protocol import Aggregate

    return out.vector if isinstance(out, Aggregate) else out


def check_aggregator(name: str, registry: Registry | None = None, **params: Any) -> None:
    """Aggregate random updates twice; check shapes, finiteness, determinism and state round-trip."""
    import torch

    from flcore.aggregation import Aggregator

    zeros = torch.zeros(17)
    first = build("aggregator", name, registry, **params)
    assert isinstance(first, Aggregator), f"aggregator '{name}' must subclass flcore.aggregation.Aggregator"
    out = _vector(first.aggregate(zeros, _fed(first, _updates(0)), round_context(0)))
    assert isinstance(out, torch.Tensor) and out.shape == (17,) and bool(torch.isfinite(out).all()), \
        f"aggregator '{name}' returned {out}"
    second = build("aggregator", name, registry, **params)
    assert torch.equal(out, _vector(second.aggregate(zeros, _fed(second, _updates(0)), round_context(0)))), \
        f"aggregator '{name}' is not deterministic"
    restored = build("aggregator", name, registry, **params)
    restored.load_state_dict(first.state_dict())
    expected = _vector(first.aggregate(out, _fed(first, _updates(1)), round_context(1)))
    assert torch.allclose(_vector(restored.aggregate(out, _fed(restored, _updates(1)), round_context(1))), expected), \
        f"aggregator '{name}': load_state_dict(state_dict()) does not restore its server state"


def check_sampler(name: str, registry: Registry | None = None, agents: int = 50, **params: Any) -> None:
    """Sample several rounds, with every agent available and with a subset; check ids are distinct,
    available and in range, and that choices are deterministic for a generator."""
    from flcore.partition import Partition

    available = np.arange(0, agents, 3)

    def rounds(subset: np.ndarray | None) -> list[list[int]]:
        sampler = build("sampler", name, registry, **params)
        population = _population(Partition.from_shards([np.arange(1 + i % 7) for i in range(agents)]),
                                 sampler, registry)
        return [np.asarray(sampler.sample(population, r, np.random.default_rng([0, r]), subset)).tolist()
                for r in range(5)]

    for subset in (None, available):
        chosen = rounds(subset)
        allowed = set(range(agents)) if subset is None else set(subset.tolist())
        for r, ids in enumerate(chosen):
            assert ids, f"sampler '{name}' chose no agent in round {r}"
            assert len(set(ids)) == len(ids), f"sampler '{name}' chose an agent twice in round {r}: {ids}"
            assert set(ids) <= allowed, f"sampler '{name}' chose agents that are not available: {sorted(set(ids) - allowed)}"
        assert chosen == rounds(subset), f"sampler '{name}' is not deterministic for a given generator"


def _population(partition: Any, component: Any, registry: Registry | None) -> Any:
    """A population with the fields ``component`` and the metadata it requires declare."""
    from flcore.agents import AgentPopulation

    population = AgentPopulation(partition, component.state_fields())
    for requirement in type(component).requirements(component.params):
        if requirement.kind == "agent_metadata":
            for agent_field in build("agent_metadata", requirement.name, registry, **requirement.params).state_fields():
                population.add_field(agent_field)
    return population


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


def check_server_plugin(name: str, registry: Registry | None = None, strategy: str = "fedavg", **params: Any) -> None:
    """Wrap ``strategy`` on random updates; check the plugin accepts it, keeps shapes finite, is
    deterministic for a seed and restores its state."""
    import torch

    from flcore.protocol import Aggregate
    from flcore.server_plugin import ServerPlugin

    def one_round(plugin: Any, index: int, start: torch.Tensor) -> torch.Tensor:
        wrapped = build("aggregator", strategy, registry)
        reason = plugin.check_strategy(wrapped)
        assert reason is None, f"server plugin '{name}' refuses '{strategy}': {reason}"
        context = round_context(index)
        updates = _updates(index)
        for update in updates:
            plugin.process_update(context, update)
            assert update.delta.shape == (17,), f"server plugin '{name}' changed an update's shape"
        aggregate = Aggregate(_vector(wrapped.aggregate(start, _fed(wrapped, updates), context)))
        plugin.process_aggregate(context, start, aggregate)
        out = aggregate.vector
        assert out.shape == (17,) and bool(torch.isfinite(out).all()), f"server plugin '{name}' produced {out}"
        return out

    first = build("server_plugin", name, registry, **params)
    assert isinstance(first, ServerPlugin), f"server plugin '{name}' must subclass flcore.server_plugin.ServerPlugin"
    out = one_round(first, 0, torch.zeros(17))
    assert torch.equal(out, one_round(build("server_plugin", name, registry, **params), 0, torch.zeros(17))), \
        f"server plugin '{name}' is not deterministic (draw randomness from context.rng(self))"
    restored = build("server_plugin", name, registry, **params)
    restored.load_state_dict(first.state_dict())
    assert torch.allclose(one_round(restored, 1, out), one_round(first, 1, out)), \
        f"server plugin '{name}': load_state_dict(state_dict()) does not restore its state"


def check_agent_plugin(name: str, out_dir: str | Path, registry: Registry | None = None, **params: Any) -> None:
    """Run the tiny experiment with the plugin; check it changes nothing it should not (shapes,
    finiteness), that two runs agree exactly, that a resumed run ends bit-identical, and, if it
    declares ``vectorizable``, that the vectorized backend gives the sequential result."""
    import torch

    from flcore.agent_plugin import AgentPlugin
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    plugin = build("agent_plugin", name, registry, **params)
    assert isinstance(plugin, AgentPlugin), f"agent plugin '{name}' must subclass flcore.agent_plugin.AgentPlugin"
    out_dir = Path(out_dir)

    def run(folder: str, backend: str = "sequential", **kwargs: Any) -> Any:
        config = validate_config(tiny_config(agent_plugins=[{"name": name, **params}], backend=backend))
        return Experiment(config, registry=registry).run(out_dir=out_dir / folder, progress=False, **kwargs)

    straight = run("a")
    again = run("b")
    for key, value in straight.state_dict.items():
        assert bool(torch.isfinite(value.float()).all()), f"agent plugin '{name}' made the model non-finite ({key})"
        assert torch.equal(value, again.state_dict[key]), f"agent plugin '{name}' is not deterministic ({key})"
    stopped = run("c", stop_after_rounds=1)
    config = validate_config(tiny_config(agent_plugins=[{"name": name, **params}]))
    resumed = Experiment(config, registry=registry).run(resume_dir=stopped.run_dir, progress=False)
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), \
            f"agent plugin '{name}': a resumed run differs ({key}); keep per-agent state in agent.state"
    if plugin.vectorizable:
        vectorized = run("d", backend={"name": "vectorized", "strict": True})
        for key, value in straight.state_dict.items():
            torch.testing.assert_close(vectorized.state_dict[key], value, rtol=1e-4, atol=1e-5,
                                       msg=f"agent plugin '{name}' trains differently when vectorized ({key})")


def check_backend(name: str, out_dir: str | Path, registry: Registry | None = None, **params: Any) -> None:
    """Run the tiny experiment on the backend and on ``sequential``; check the global models agree
    (to float rounding), and that a run stopped and resumed on the backend ends bit-identical."""
    import torch

    from flcore.backend import Backend
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    assert isinstance(build("backend", name, registry, **params), Backend), \
        f"backend '{name}' must subclass flcore.backend.Backend"
    out_dir = Path(out_dir)
    config = validate_config(tiny_config(backend={"name": name, **params}))

    def run(folder: str, chosen: Any = config, **kwargs: Any) -> Any:
        return Experiment(chosen, registry=registry).run(out_dir=out_dir / folder, progress=False, **kwargs)

    reference = run("sequential", validate_config(tiny_config()))
    mine = run("backend")
    for key, value in reference.state_dict.items():
        torch.testing.assert_close(mine.state_dict[key], value, rtol=1e-4, atol=1e-5,
                                   msg=f"backend '{name}' trains a different model than sequential ({key})")
    stopped = run("stopped", stop_after_rounds=1)
    resumed = Experiment(config, registry=registry).run(resume_dir=stopped.run_dir, progress=False)
    for key, value in mine.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), f"backend '{name}': a resumed run differs ({key})"
