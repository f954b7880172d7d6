"""`flcore run --resume` after a real SIGKILL ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from flcore.engine.checkpoint import load_sealed


def next_round(checkpoint) -> int:
    return int(load_sealed(checkpoint)["state"]["next_round"])


def _flcore(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=50, aggregator={"name": "fedavgm", "momentum": 0.5})
    tiny_config["model"]["dropout"] = 0.1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))

    straight = _flcore("run", str(config), "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    victim = _flcore("run", str(config), "--out", str(tmp_path / "killed"))
    deadline = time.monotonic() + 120
    checkpoint = None
    while time.monotonic() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed").glob("*/checkpoint.pt"))
        if found and next_round(found[0]) >= 5:
            checkpoint = found[0]
            break
        time.sleep(0.01)
    assert checkpoint is not None and victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert next_round(checkpoint) < 50

    resumed = _flcore("run", "--resume", str(checkpoint.parent))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = torch.load(next((tmp_path / "straight").glob("*/model.pt")), weights_only=True)
    b = torch.load(checkpoint.parent / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
