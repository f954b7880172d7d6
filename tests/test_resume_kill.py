"""`flcore run --resume` after a real SIGKILL ends with the same weights as an uninterrupted run, on
every backend."""

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


def _flcore(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the distributed backend's processes run one thread each
    return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


BACKENDS = {
    "sequential": ({"name": "fedavgm", "momentum": 0.5}, "sequential", [], 0.1),
    "vectorized": ({"name": "fedprox", "mu": 0.1}, {"name": "vectorized", "strict": True}, [], None),
    "distributed": ({"name": "scaffold"}, "distributed", ["--devices", "2"], 0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_resume_after_kill_9_is_bit_identical(tmp_path, tiny_config, backend):
    aggregator, spec, extra, dropout = BACKENDS[backend]
    tiny_config["federation"].update(rounds=40, aggregator=aggregator, backend=spec)
    if dropout:
        tiny_config["model"]["dropout"] = dropout
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))

    straight = _flcore("run", str(config), "--out", str(tmp_path / "straight"), *extra)
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    victim = _flcore("run", str(config), "--out", str(tmp_path / "killed"), *extra)
    deadline = time.monotonic() + 120
    checkpoint = None
    while time.monotonic() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed").glob("*/checkpoint.pt"))
        try:
            if found and next_round(found[0]) >= 5:
                checkpoint = found[0]
                break
        except Exception:  # the checkpoint is replaced while we read it: read again
            pass
        time.sleep(0.01)
    assert checkpoint is not None and victim.poll() is None, "the run ended before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)  # the whole process group: a distributed run's workers too
    victim.wait()
    assert next_round(checkpoint) < 40

    resumed = _flcore("run", "--resume", str(checkpoint.parent))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = torch.load(next((tmp_path / "straight").glob("*/model.pt")), weights_only=True)
    b = torch.load(checkpoint.parent / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
