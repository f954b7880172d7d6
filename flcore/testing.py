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


def validate_exit(out_dir: str | Path, config: dict[str, Any]) -> str:
    """``flcore validate`` on ``config`` (written to ``out_dir``): assert it is refused as bad input
    (exit code 2, no traceback) and return the message with its whitespace folded, for a test to
    check that it names the field."""
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    path = Path(out_dir) / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    return " ".join(result.output.split())


def run_in_one_and_two_processes(out_dir: str | Path, config: dict[str, Any]) -> tuple[Path, Path]:
    """``flcore run`` on ``config`` in one process and with ``--devices 2`` (the distributed
    backend's two gloo processes), each in a fresh interpreter; assert both exit 0 and that their
    final models are bit-identical; return the two run folders (to compare metrics, say)."""
    import os
    import subprocess
    import sys

    import torch
    import yaml

    out_dir = Path(out_dir)
    path = out_dir / "distributed.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "flcore.cli", "run", str(path), "--quiet", "--out"]
    runs = []
    for folder, extra in (("one", []), ("two", ["--devices", "2"])):
        done = subprocess.run(command + [str(out_dir / folder), *extra], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        runs.append(next((out_dir / folder).glob("*/model.pt")).parent)
    one, two = (torch.load(run / "model.pt", weights_only=True) for run in runs)
    for name in one:
        assert torch.equal(one[name], two[name]), f"{name} differs between one and two processes"
    return runs[0], runs[1]


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


def check_server_plugin(name: str, registry: Registry | None = None, strategy: str = "fedavg",
                        strategy_params: dict[str, Any] | None = None, **params: Any) -> None:
    """Wrap ``strategy`` (built with ``strategy_params``) on random updates; check the plugin accepts
    it, keeps shapes finite, is deterministic for a seed and restores its state."""
    import torch

    from flcore.protocol import Aggregate, overrides
    from flcore.server_plugin import ServerPlugin

    def one_round(plugin: Any, index: int, start: torch.Tensor) -> torch.Tensor:
        wrapped = build("aggregator", strategy, registry, **(strategy_params or {}))
        reason = plugin.check_strategy(wrapped)
        assert reason is None, f"server plugin '{name}' refuses '{strategy}': {reason}"
        context = round_context(index)
        updates = _updates(index)
        for update in updates:
            plugin.process_update(context, update)
            assert update.delta.shape == (17,), f"server plugin '{name}' changed an update's shape"
        fed = _fed(wrapped, updates)
        if overrides(plugin, "process_sum", ServerPlugin):  # as the engine does, around sum_based strategies
            total = wrapped.update_sum(fed)
            plugin.process_sum(context, total)
            assert total.vector.shape == (17,) and total.weight > 0, f"server plugin '{name}' broke the sum"
        aggregate = Aggregate(_vector(wrapped.aggregate(start, fed, context)))
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


def _built_with_population(kind: str, name: str, registry: Registry | None, agents: int, seed: int,
                           params: dict[str, Any]) -> tuple[Any, Any]:
    """A component of ``kind`` and a population with its fields, after its ``setup`` (as a run does)."""
    from flcore.partition import Partition
    from flcore.protocol import SETUP_STREAM, component_rng

    component = build(kind, name, registry, **params)
    population = _population(Partition.from_shards([np.arange(1 + i % 7) for i in range(agents)]), component, registry)
    component.setup(population, component_rng(seed, component, SETUP_STREAM))
    return component, population


def _context_at(index: int, population: Any, clock: float, seed: int = 0) -> Any:
    import torch

    from flcore.protocol import RoundContext

    return RoundContext(index, index + 1, seed, population, torch.zeros(17), clock=clock)


def check_availability(name: str, registry: Registry | None = None, agents: int = 50, rounds: int = 6,
                       seconds_per_round: float = 3600.0, **params: Any) -> None:
    """Ask the model who is online over several rounds, the clock advancing ``seconds_per_round``,
    with every agent available and with a subset; check the ids are sorted, distinct, in range and
    among those available, that the answers are deterministic for a seed, and that a model restored
    from ``state_dict()`` answers the same."""
    from flcore.availability import Availability

    def answers(restore_from: Any = None) -> tuple[Any, list[list[int] | None]]:
        model, population = _built_with_population("availability", name, registry, agents, 0, params)
        if restore_from is not None:
            model.load_state_dict(restore_from.state_dict())
        out: list[list[int] | None] = []
        for r in range(rounds):
            for given in (None, np.arange(0, agents, 3)):
                online = model.availability(_context_at(r, population, r * seconds_per_round), given)
                if online is None:
                    assert given is None, f"availability '{name}' returned None (everyone) for a subset of agents"
                    out.append(None)
                    continue
                ids = np.asarray(online)
                assert ids.ndim == 1 and (len(ids) == 0 or np.issubdtype(ids.dtype, np.integer)), \
                    f"availability '{name}' returned {ids!r}; expected a 1-D array of agent ids"
                assert bool((np.diff(ids) > 0).all()), f"availability '{name}' returned ids that are not sorted and distinct"
                allowed = np.arange(agents) if given is None else given
                assert bool(np.isin(ids, allowed).all()), \
                    f"availability '{name}' returned agents that were not available: {sorted(set(ids) - set(allowed))[:10]}"
                out.append(ids.tolist())
        return model, out

    first, expected = answers()
    assert isinstance(first, Availability), f"availability '{name}' must subclass flcore.availability.Availability"
    assert answers()[1] == expected, f"availability '{name}' is not deterministic (draw from context.rng(self))"
    assert answers(restore_from=first)[1] == expected, \
        f"availability '{name}': load_state_dict(state_dict()) does not restore it"


def check_device_profile(name: str, registry: Registry | None = None, agents: int = 50, **params: Any) -> None:
    """Time random work on every agent; check the seconds are finite, non-negative, never fewer for
    more samples or bytes, deterministic for a seed, and that ``samples_within`` returns the most
    samples that fit in a time."""
    from flcore.devices import DeviceProfile, Work

    profile, population = _built_with_population("device_profile", name, registry, agents, 0, params)
    assert isinstance(profile, DeviceProfile), f"device profile '{name}' must subclass flcore.devices.DeviceProfile"
    rng = np.random.default_rng(0)
    ids = np.arange(agents)
    work = Work(rng.integers(0, 2000, agents).astype(np.float64), rng.uniform(0, 1e6, agents), rng.uniform(0, 1e6, agents))
    seconds = np.asarray(profile.seconds(population, ids, work), dtype=np.float64)
    assert seconds.shape == (agents,) and bool(np.isfinite(seconds).all()) and bool((seconds >= 0).all()), \
        f"device profile '{name}' returned {seconds[:5]}...; expected finite non-negative seconds, one per agent"
    for more in (Work(work.samples + 100, work.download_bytes, work.upload_bytes),
                 Work(work.samples, work.download_bytes * 2, work.upload_bytes),
                 Work(work.samples, work.download_bytes, work.upload_bytes * 2)):
        assert bool((np.asarray(profile.seconds(population, ids, more)) >= seconds).all()), \
            f"device profile '{name}' takes less time for more work"
    again, population_again = _built_with_population("device_profile", name, registry, agents, 0, params)
    assert np.array_equal(again.seconds(population_again, ids, work), seconds), \
        f"device profile '{name}' is not deterministic for a seed (draw from the rng given to setup)"
    budget, most = np.maximum(seconds, 1e-3), 10**6
    fit = np.asarray(profile.samples_within(population, ids, budget, work.download_bytes, work.upload_bytes, most=most))
    assert fit.shape == (agents,) and bool(((fit >= 0) & (fit <= most)).all()), \
        f"device profile '{name}': samples_within returned {fit[:5]}; expected 0 to most samples per agent"
    within = np.asarray(profile.seconds(population, ids, Work(fit, work.download_bytes, work.upload_bytes)))
    beyond = np.asarray(profile.seconds(population, ids, Work(fit + 1, work.download_bytes, work.upload_bytes)))
    assert bool(((fit == 0) | (within <= budget)).all()), f"device profile '{name}': samples_within gives more than fits"
    assert bool(((beyond > budget) | (fit == most)).all()), \
        f"device profile '{name}': samples_within gives fewer samples than fit"


def check_round_policy(name: str, out_dir: str | Path, registry: Registry | None = None,
                       device_profile: Any = "drawn", **params: Any) -> None:
    """Run the tiny experiment with the policy on ``device_profile``; check two runs agree exactly,
    the virtual clock never goes back, and a run stopped after one round and resumed ends
    bit-identical with the same clock."""
    import torch

    from flcore.config import validate_config
    from flcore.experiment import Experiment
    from flcore.policy import RoundPolicy

    assert isinstance(build("round_policy", name, registry, **params), RoundPolicy), \
        f"round policy '{name}' must subclass flcore.policy.RoundPolicy"
    out_dir = Path(out_dir)
    config = validate_config(tiny_config(round_policy={"name": name, **params}, device_profile=device_profile,
                                         rounds=3, sampler={"name": "uniform", "count": 5}))

    def run(folder: str, **kwargs: Any) -> Any:
        return Experiment(config, registry=registry).run(out_dir=out_dir / folder, progress=False, **kwargs)

    first, second = run("a"), run("b")
    clock = [row["virtual_seconds"] for row in first.history]
    assert all(b >= a for a, b in zip(clock, clock[1:])), f"round policy '{name}': the clock went back: {clock}"
    assert clock == [row["virtual_seconds"] for row in second.history], f"round policy '{name}' is not deterministic"
    stopped = run("c", stop_after_rounds=1)
    resumed = Experiment(config, registry=registry).run(resume_dir=stopped.run_dir, progress=False)
    assert [row["virtual_seconds"] for row in resumed.history] == clock, \
        f"round policy '{name}': a resumed run's clock differs; keep what the clock needs in state_dict"
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), f"round policy '{name}' is not deterministic ({key})"
        assert torch.equal(value, resumed.state_dict[key]), \
            f"round policy '{name}': a resumed run differs ({key}); keep held updates in state_dict"
