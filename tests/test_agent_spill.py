"""Per-agent state beyond its memory budget: spilled to files, read back bit for bit, checkpointed
in bounded pieces, and invisible in a run's results (flcore.agent_spill)."""

from __future__ import annotations

import numpy as np
import torch

from flcore.agent_spill import SpillCache, SpilledField, value_bytes
from flcore.agents import AgentField, AgentPopulation
from flcore.config import validate_config
from flcore.engine.state_store import CheckpointStore
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.testing import tiny_config


def population(agents: int = 40) -> AgentPopulation:
    return AgentPopulation(Partition.from_shards([np.array([a]) for a in range(agents)]),
                           [AgentField("count", 0, "int64"), AgentField("personal"), AgentField("head")])


def values(agents: int, size: int, seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {a: torch.randn(size, generator=gen) for a in range(agents)}


def test_the_cache_holds_no_more_than_its_budget_and_returns_every_value_bit_for_bit(tmp_path):
    budget = 5 * 400  # five 100-float values
    cache = SpillCache(tmp_path / "spill", budget)
    field = SpilledField(cache, 0)
    expected = values(30, 100)
    for agent, value in expected.items():
        field[agent] = value.clone()
        assert cache.cached_bytes <= budget
    assert cache.peak_bytes <= budget
    assert len(cache.cached) == 5 and cache.spilled_writes == 25
    assert len(list((tmp_path / "spill" / "0").iterdir())) == 25
    assert sorted(field) == list(range(30)) and len(field) == 30
    for agent in reversed(range(30)):
        assert torch.equal(field[agent], expected[agent]), agent
        assert cache.cached_bytes <= budget
    assert field.get(99, "default") == "default" and 99 not in field and 3 in field


def test_recently_used_values_stay_and_unchanged_ones_are_not_written_twice(tmp_path):
    cache = SpillCache(tmp_path / "spill", 3 * 400)
    field = SpilledField(cache, 0)
    for agent, value in values(6, 100).items():
        field[agent] = value
    writes = cache.spilled_writes  # agents 0, 1, 2 went to disk
    field[0]  # read back: agent 3 is now the least recently used
    field[4]
    assert set(k[1] for k in cache.cached) == {0, 4, 5}
    for agent in (1, 2, 3):  # reading clean values pushes out 0 (clean), 4, 5 (never written)
        field[agent]
    assert cache.spilled_writes == writes + 3  # 3 (evicted when 0 came in), 4 and 5; 0 not again
    assert cache.loads == 4


def test_a_new_value_replaces_the_spilled_one(tmp_path):
    cache = SpillCache(tmp_path / "spill", 400)
    field = SpilledField(cache, 0)
    field[0], field[1] = torch.zeros(100), torch.ones(100)  # agent 0 is on disk
    field[0] = torch.full((100,), 7.0)
    field[1]  # pushes the new value of agent 0 out
    assert torch.equal(field[0], torch.full((100,), 7.0))


def test_two_fields_share_the_budget_and_keep_their_own_values(tmp_path):
    pop = population()
    pop.spill_to(str(tmp_path / "spill"), budget_bytes=4 * 400)
    personal, head = values(40, 100, seed=1), values(40, 10, seed=2)
    for agent in range(40):
        pop.set("personal", agent, personal[agent])
        pop.set("head", agent, head[agent])
    assert pop.spill.cached_bytes <= 4 * 400
    for agent in range(40):
        assert torch.equal(pop.get("personal", agent), personal[agent])
        assert torch.equal(pop.get("head", agent), head[agent])
    assert pop.get("personal", 99 % 40) is not None and pop.get("count", 3) == 0


def test_values_set_before_the_budget_applies_are_kept(tmp_path):
    pop = population(5)
    expected = values(5, 100)
    for agent, value in expected.items():
        pop.set("personal", agent, value)
    pop.spill_to(str(tmp_path / "spill"), budget_bytes=400)
    assert all(torch.equal(pop.get("personal", a), expected[a]) for a in range(5))


def test_snapshot_parts_are_bounded_and_restore_the_same_population(tmp_path):
    pop = population()
    pop.spill_to(str(tmp_path / "spill"), budget_bytes=3 * 400)
    expected = values(40, 100)
    for agent in range(0, 40, 2):  # half the agents hold a value
        pop.set("personal", agent, expected[agent])
    pop.update("count", np.arange(40), np.arange(40) * 3)
    parts = list(pop.snapshot_parts(max_bytes=5 * 400))
    assert len(parts) == 4 + 1  # 20 values in fives, then the empty "head" field
    assert "count" in parts[0] and all("count" not in p for p in parts[1:])
    for part in parts:
        held = sum(value_bytes(v) for row in part.values() if row["agents"] is not None for v in row["values"])
        assert held <= 5 * 400
    restored = population()
    for part in parts:
        restored.apply(part)
    assert np.array_equal(restored.column("count"), np.arange(40) * 3)
    assert sorted(restored.sparse_items("personal")) == list(range(0, 40, 2))
    assert all(torch.equal(restored.get("personal", a), expected[a]) for a in range(0, 40, 2))
    whole = pop.snapshot()
    assert np.array_equal(whole["personal"]["agents"], np.arange(0, 40, 2))


def test_a_checkpoint_writes_its_snapshot_in_pieces_and_restores_it(tmp_path, monkeypatch):
    import flcore.engine.state_store as state_store

    monkeypatch.setattr(state_store, "PART_BYTES", 4 * 400)
    pop = population()
    pop.spill_to(str(tmp_path / "spill"), budget_bytes=2 * 400)
    expected = values(40, 100)
    for agent in range(40):
        pop.set("personal", agent, expected[agent])
    pop.update("count", np.arange(40), 5)
    store = CheckpointStore(tmp_path / "run")
    store.save({"round": 1}, {"agents": 40}, pop, round_tag=1)  # 80 changed rows > 40 agents: a snapshot
    assert store.journal[0]["name"].startswith("snapshot-")
    assert len(store.journal) >= 10 and sum(e["rows"] for e in store.journal) == 0
    for agent in range(10):  # then a change of ten agents: pieces of a changes file
        pop.set("personal", agent, -expected[agent])
    store.save({"round": 2}, {"agents": 40}, pop, round_tag=2)
    assert sum(e["name"].startswith("changes-") for e in store.journal) >= 3
    fresh = population()
    reloaded = CheckpointStore(tmp_path / "run")
    reloaded.load()
    reloaded.restore_population(fresh)
    assert all(torch.equal(fresh.get("personal", a), (-1 if a < 10 else 1) * expected[a]) for a in range(40))
    assert np.array_equal(fresh.column("count"), np.full(40, 5))


def feddyn_config(memory_mb: float, rounds: int = 5) -> dict:
    config = tiny_config(agents=8, rounds=rounds, sampler="uniform", aggregator={"name": "feddyn", "alpha": 0.05})
    config["federation"]["sampler"] = {"name": "uniform", "count": 3}
    config["federation"]["agent_state_memory_mb"] = memory_mb
    config["model"] = "logistic"
    return validate_config(config)


def test_a_run_that_spills_its_agents_state_equals_one_that_does_not_and_resumes_exactly(tmp_path):
    """FedDyn's g_k (one model-sized vector per agent that trained) with room for one of them."""
    one_vector_mb = 0.99 * (64 * 10 + 10) * 4 / 2**20
    in_memory = Experiment(feddyn_config(1024.0)).run(out_dir=tmp_path / "memory", progress=False)
    spilled = Experiment(feddyn_config(one_vector_mb)).run(out_dir=tmp_path / "spilled", progress=False)
    stopped = Experiment(feddyn_config(one_vector_mb)).run(out_dir=tmp_path / "stopped", progress=False,
                                                          stop_after_rounds=3)
    resumed = Experiment(feddyn_config(one_vector_mb)).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in in_memory.state_dict.items():
        assert torch.equal(spilled.state_dict[name], value), name
        assert torch.equal(resumed.state_dict[name], value), name
    assert in_memory.final["agent_state"]["values_spilled"] == 0
    stats = spilled.final["agent_state"]
    assert stats["values_spilled"] > 0 and stats["values_loaded"] > 0
    assert stats["peak_bytes_in_memory"] <= (64 * 10 + 10) * 4
    for run in (spilled, resumed):
        assert not [p for p in run.run_dir.iterdir() if p.name.startswith(".agent-state")]
