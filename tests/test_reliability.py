"""A run folder survives what happens to real runs: a second writer, signals, kills before the first
checkpoint, resuming a finished run, a full disk, rounds in which every agent fails."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from flcore.cli import main
from flcore.config import validate_config
from flcore.engine.checkpoint import load_sealed
from flcore.errors import RunFailure
from flcore.experiment import Experiment


def _config(tmp_path, tiny_config, **federation):
    tiny_config["federation"].update(federation)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


def _flcore(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_for_checkpoint(root, at_least: int, process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for found in root.glob("*/checkpoint.pt"):
            try:
                if load_sealed(found)["state"]["next_round"] >= at_least:
                    return found.parent
            except Exception:  # replaced while read
                pass
        time.sleep(0.02)
    raise AssertionError("the run ended or stalled before its checkpoint: " + (process.stdout.read() or ""))


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, tiny_config):
    config = _config(tmp_path, tiny_config, rounds=200)
    first = _flcore("run", str(config), "--out", str(tmp_path / "runs"), "--quiet")
    try:
        run_dir = _wait_for_checkpoint(tmp_path / "runs", 1, first)
        second = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
        assert second.exit_code == 2, second.output
        assert "being written by another flcore process (pid" in second.output
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead process's lock: the folder resumes
    resumed = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "federation.rounds=3", "--quiet"])
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_and_says_how_to_resume(tmp_path, tiny_config, signum):
    config = _config(tmp_path, tiny_config, rounds=500)
    process = _flcore("run", str(config), "--out", str(tmp_path / "runs"), "--quiet")
    run_dir = _wait_for_checkpoint(tmp_path / "runs", 2, process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert f"continue with: flcore run --resume {run_dir}" in output and "holds the checkpoint after round" in output
    assert "Traceback" not in output


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed(tmp_path, tiny_config):
    config = validate_config(tiny_config)
    first = Experiment(config).run(out_dir=tmp_path / "a")
    run_dir = first.run_dir
    (run_dir / "checkpoint.pt").unlink()  # as if killed before the first checkpoint
    (run_dir / ".metrics.csv.abc.tmp").write_text("half")
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not list(run_dir.glob(".*.tmp"))
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def test_resuming_a_finished_run_keeps_its_records(tmp_path, tiny_config):
    tiny_config["logging"]["profiler"] = "simple"
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    run_dir = result.run_dir
    before = {name: (run_dir / name).read_bytes() for name in ("summary.json", "metrics.csv", "profile.txt",
                                                                "config.yaml", "checkpoint.pt")}
    again = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert "all 3 rounds are done; nothing to resume" in again.output
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_an_extended_run_adds_up_its_time_and_keeps_each_sessions_profile(tmp_path, tiny_config):
    tiny_config["logging"]["profiler"] = "simple"
    first = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    seconds = json.loads((first.run_dir / "summary.json").read_text())["seconds"]
    result = CliRunner().invoke(main, ["run", "--resume", str(first.run_dir), "--set", "federation.rounds=5", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["sessions"] == 2 and summary["seconds"] > seconds
    assert (first.run_dir / "profile.txt").stat().st_size > 0
    assert (first.run_dir / "profile-session2.txt").stat().st_size > 0
    rows = (first.run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert all(row.split(",")[14] for row in rows), "every row keeps its seconds"


def test_a_refused_resume_leaves_the_config_as_it_was(tmp_path, tiny_config):
    first = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    saved = (first.run_dir / "config.yaml").read_bytes()
    data = bytearray((first.run_dir / "checkpoint.pt").read_bytes())
    data[-50] ^= 0xFF
    (first.run_dir / "checkpoint.pt").write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["run", "--resume", str(first.run_dir), "--set", "federation.rounds=9"])
    assert result.exit_code == 2
    assert (first.run_dir / "config.yaml").read_bytes() == saved


def _fill_disk_after(monkeypatch, name: str):
    """Make the next atomic write of ``name`` fail as a full device does."""
    import flcore.engine.checkpoint as checkpoint

    original = checkpoint._replace_atomically

    def replace(path, write):
        if path.name == name:
            def failing(handle):
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(path, failing)
        return original(path, write)

    monkeypatch.setattr(checkpoint, "_replace_atomically", replace)


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    config = validate_config(tiny_config)
    first = Experiment(config).run(out_dir=tmp_path, stop_after_rounds=1)
    intact = (first.run_dir / "checkpoint.pt").read_bytes()
    _fill_disk_after(monkeypatch, "checkpoint.pt")
    with pytest.raises(RunFailure) as info:
        Experiment(config).run(resume_dir=first.run_dir)
    message = str(info.value)
    assert "no space left on the device while writing" in message and "checkpoint.pt" in message
    assert "holds the checkpoint after round 1" in message and "flcore run --resume" in message
    assert (first.run_dir / "checkpoint.pt").read_bytes() == intact
    assert not list(first.run_dir.glob(".*.tmp"))


def test_a_full_disk_before_the_first_checkpoint_leaves_no_folder(tmp_path, tiny_config, monkeypatch):
    _fill_disk_after(monkeypatch, "checkpoint.pt")
    with pytest.raises(RunFailure, match="folder was removed"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_run_in_which_every_update_is_skipped_fails(tmp_path, tiny_config):
    """Fewer rounds than federation.stall_rounds, every agent failing: still not exit 0."""
    tiny_config["training"]["optimizer"]["lr"] = 1e30
    config = _config(tmp_path, tiny_config, rounds=2, on_agent_failure="skip")
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 1
    assert "no update was accepted in any of the 2 rounds" in result.output


def test_consecutive_rounds_without_an_update_stop_the_run(tmp_path, tiny_config):
    tiny_config["training"]["optimizer"]["lr"] = 1e30
    config = _config(tmp_path, tiny_config, rounds=10, on_agent_failure="skip", stall_rounds=2)
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 1
    assert "no update was accepted in 2 consecutive rounds (up to round 2; federation.stall_rounds = 2)" in result.output


def test_outside_a_terminal_progress_is_a_line_per_round_at_most_every_ten_seconds(tmp_path, tiny_config):
    tiny_config["logging"]["progress"] = "auto"
    config = _config(tmp_path, tiny_config, rounds=4)
    env = {**os.environ}
    lines = subprocess.run([sys.executable, "-m", "flcore.cli", "run", str(config), "--out", str(tmp_path / "a")],
                           capture_output=True, text=True, env=env, check=True).stderr.splitlines()
    progress = [line for line in lines if line.startswith("round ")]
    assert progress[0].startswith("round 1/4 train_loss=") and progress[-1].startswith("round 4/4")
    assert len(progress) <= 4
    quiet = subprocess.run([sys.executable, "-m", "flcore.cli", "run", str(config), "--out", str(tmp_path / "b"),
                            "--quiet"], capture_output=True, text=True, env=env, check=True).stderr
    assert "round " not in quiet
