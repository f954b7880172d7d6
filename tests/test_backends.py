"""The execution backends give the same global model."""

from __future__ import annotations

import pytest
import torch

from flcore.config import validate_config
from flcore.experiment import Experiment


def run(tmp_path, config, backend, name):
    config["federation"]["backend"] = backend
    return Experiment(validate_config(config)).run(out_dir=tmp_path / name)


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.1},
                                       {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
                                       {"name": "sgd", "lr": 0.05, "momentum": 0.5, "nesterov": True},
                                       {"name": "adam", "lr": 0.003, "weight_decay": 1e-3},
                                       {"name": "adamw", "lr": 0.003, "weight_decay": 1e-2, "betas": [0.8, 0.99]}])
def test_vectorized_equals_sequential(tmp_path, tiny_config, optimizer):
    tiny_config["federation"].update(partitioner={"name": "quantity_skew", "sigma": 0.5}, rounds=3)
    tiny_config["training"] = {"epochs": 2, "batch_size": 16, "optimizer": optimizer}
    sequential = run(tmp_path, tiny_config, "sequential", "s")
    vectorized = run(tmp_path, tiny_config, "vectorized", "v")
    for name, value in sequential.state_dict.items():
        torch.testing.assert_close(vectorized.state_dict[name], value, rtol=1e-4, atol=1e-5)
    for a, b in zip(sequential.history, vectorized.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_vectorized_respects_max_steps_and_full_batch(tmp_path, tiny_config):
    tiny_config["training"] = {"epochs": 3, "batch_size": 8, "max_steps": 5, "optimizer": {"name": "sgd", "lr": 0.1}}
    a, b = run(tmp_path, tiny_config, "sequential", "s"), run(tmp_path, tiny_config, "vectorized", "v")
    for name, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], value, rtol=1e-4, atol=1e-5)


def test_vectorized_falls_back_with_a_warning_when_it_cannot(tmp_path, tiny_config):
    tiny_config["federation"]["aggregator"] = "fedprox"
    with pytest.warns(UserWarning, match="falling back to sequential"):
        fallback = run(tmp_path, tiny_config, "vectorized", "v")
    reference = run(tmp_path, tiny_config, "sequential", "s")
    for name, value in reference.state_dict.items():
        assert torch.equal(fallback.state_dict[name], value)


@pytest.mark.slow
def test_distributed_over_two_gloo_processes_equals_one_process(tmp_path, tiny_config):
    """Two CPU processes (DDP over gloo) train disjoint halves of each round's agents; every update
    is gathered and aggregated in selection order, so the model is bit-identical to one process
    with the same thread count (Lightning gives each DDP process one thread)."""
    import os
    import subprocess
    import sys

    import yaml

    tiny_config["federation"]["aggregator"] = {"name": "multikrum", "byzantine": 1}
    tiny_config["federation"]["sampler"] = {"name": "uniform", "count": 5}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "flcore.cli", "run", str(config), "--out"]
    one = subprocess.run(command + [str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(command + [str(tmp_path / "two"), "--devices", "2"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("results:") == 1  # only rank 0 reports
    a = torch.load(next((tmp_path / "one").glob("*/model.pt")), weights_only=True)
    b = torch.load(next((tmp_path / "two").glob("*/model.pt")), weights_only=True)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = (next((tmp_path / "two").glob("*/logs/agents/version_0/metrics.csv"))).read_text().splitlines()
    assert len(rows) == 1 + 3 * 5  # every rank's agents are logged by rank 0


def test_aggregators_with_per_agent_hooks_are_refused_by_the_distributed_backend():
    from flcore.aggregation import Aggregator
    from flcore.engine.runtime import check_distributable
    from flcore.errors import ConfigError

    class KeepsAgentState(Aggregator):
        def on_local_end(self, context, update):
            pass

    with pytest.raises(ConfigError, match="'mine' keeps per-agent state in on_local_end"):
        check_distributable(KeepsAgentState(None), "mine")
    check_distributable(Aggregator(None), "plain")  # no hooks: accepted
