"""Checkpoints: their cost follows the agents a round touched, they are checked before a resume,
and any tampering is refused with a message naming the file."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from scale_data import ManySamples

from flcore.cli import main
from flcore.config import validate_config
from flcore.engine.checkpoint import CorruptFile, load_sealed
from flcore.engine.state_store import read_checkpoint
from flcore.experiment import Experiment


def _sizes(run_dir) -> tuple[int, list[int]]:
    return (run_dir / "checkpoint.pt").stat().st_size, sorted(p.stat().st_size for p in (run_dir / "agents").iterdir())


def test_a_checkpoint_costs_the_agents_a_round_touched_not_the_population(tmp_path, tiny_config):
    """Ten agents per round, with participation metadata: 1,000 or 100,000 registered agents write
    checkpoints of the same size (today's checkpoints rewrote every agent's columns)."""
    tiny_config.update(dataset="many_samples", model="logistic")
    sizes = {}
    for agents in (1_000, 100_000):
        config = copy.deepcopy(tiny_config)
        config["federation"].update(agents=agents, rounds=3, sampler={"name": "uniform", "count": 10},
                                    agent_metadata=["participation"])
        result = Experiment(validate_config(config), plugins=[("m", ManySamples)]).run(out_dir=tmp_path / str(agents))
        sizes[agents] = _sizes(result.run_dir)
        journal = read_checkpoint(result.run_dir)["journal"]
        assert [entry["rows"] for entry in journal] == [4 * 10] * 3  # 4 fields x 10 agents, per round
    (small, small_files), (large, large_files) = sizes[1_000], sizes[100_000]
    assert abs(large - small) < 2_000, sizes
    assert all(abs(a - b) < 2_000 for a, b in zip(small_files, large_files)), sizes


def test_the_journal_compacts_into_one_snapshot_and_resumes_exactly(tmp_path, tiny_config):
    tiny_config["federation"].update(agents=6, rounds=5, sampler="all", agent_metadata=["participation"])
    config = validate_config(tiny_config)
    straight = Experiment(config).run(out_dir=tmp_path / "a")
    journal = read_checkpoint(straight.run_dir)["journal"]
    assert len(journal) <= 2 and journal[0]["name"].startswith("snapshot-")
    assert sorted(p.name for p in (straight.run_dir / "agents").iterdir()) == sorted(e["name"] for e in journal)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", stop_after_rounds=3)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value)
    np.testing.assert_array_equal(read_checkpoint(resumed.run_dir)["columns"]["last_loss"],
                                  read_checkpoint(straight.run_dir)["columns"]["last_loss"])


@pytest.fixture
def stopped_run(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=4, agent_metadata=["participation"])
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(main, ["run", str(config_file), "--out", str(tmp_path / "runs"),
                                       "--set", "federation.rounds=2", "--quiet"])
    assert result.exit_code == 0, result.output
    return next((tmp_path / "runs").iterdir())


def resume(run_dir):
    return CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "federation.rounds=4", "--quiet"])


def test_a_flipped_bit_is_refused_naming_the_file(stopped_run):
    data = bytearray((stopped_run / "checkpoint.pt").read_bytes())
    data[-100] ^= 0x01
    (stopped_run / "checkpoint.pt").write_bytes(bytes(data))
    result = resume(stopped_run)
    assert result.exit_code == 2 and "checkpoint.pt' is corrupt" in result.output


def test_a_tampered_agent_file_is_refused_naming_it(stopped_run):
    agent_file = next((stopped_run / "agents").iterdir())
    agent_file.write_bytes(agent_file.read_bytes()[:-10])
    result = resume(stopped_run)
    assert result.exit_code == 2 and agent_file.name in result.output and "truncated" in result.output


def test_a_checkpoint_of_another_run_is_refused(stopped_run, tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=2, agents=12)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_config))
    assert CliRunner().invoke(main, ["run", str(other), "--out", str(tmp_path / "other"), "--quiet"]).exit_code == 0
    foreign = next((tmp_path / "other").iterdir()) / "checkpoint.pt"
    (stopped_run / "checkpoint.pt").write_bytes(foreign.read_bytes())
    result = resume(stopped_run)
    assert result.exit_code == 2 and "another config" in result.output


def test_a_checkpoint_of_another_model_or_agent_count_is_refused(stopped_run):
    """Even with a matching config fingerprint, shapes and agent counts are checked."""
    from flcore.engine.checkpoint import save_sealed

    checkpoint = load_sealed(stopped_run / "checkpoint.pt")
    wrong_agents = copy.deepcopy(checkpoint)
    wrong_agents["manifest"]["agents"] = 9
    save_sealed(wrong_agents, stopped_run / "checkpoint.pt")
    result = resume(stopped_run)
    assert result.exit_code == 2 and "holds 9 agents; this run has 8" in result.output
    wrong_model = copy.deepcopy(checkpoint)
    wrong_model["manifest"]["model"][0] = ("net.0.weight", (3, 3))
    save_sealed(wrong_model, stopped_run / "checkpoint.pt")
    result = resume(stopped_run)
    assert result.exit_code == 2 and "model of other shapes" in result.output


def test_a_pickle_in_place_of_a_checkpoint_runs_no_code(stopped_run, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (stopped_run / "checkpoint.pt").write_bytes(pickle.dumps(Exploit()))
    result = resume(stopped_run)
    assert result.exit_code == 2 and "not a checkpoint written by this version" in result.output
    assert not marker.exists()
    with pytest.raises(CorruptFile):
        load_sealed(stopped_run / "checkpoint.pt")
