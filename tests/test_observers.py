"""Lightning loggers and profilers receive the run's metrics and timings."""

from __future__ import annotations

import pytest

from flcore.config import validate_config
from flcore.errors import ConfigError
from flcore.experiment import Experiment


def test_tensorboard_receives_global_and_agent_metrics_under_stable_names(tmp_path, tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["logging"]["loggers"] = ["csv", {"name": "tensorboard", "version": "tb"}]
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    events = EventAccumulator(str(result.run_dir / "logs" / "tiny" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"test_acc", "test_loss", "train_loss", "agents_seen", "memory/peak_rss_mib"} <= tags
    assert [e.step for e in events.Scalars("test_acc")] == [1, 2, 3]
    assert [round(e.value, 6) for e in events.Scalars("test_acc")] == [round(r["test_acc"], 6) for r in result.history]
    assert any(tag.startswith("agent_") and tag.endswith("/train_loss") for tag in tags)


@pytest.mark.parametrize("profiler", ["simple", "advanced", "pytorch"])
def test_every_lightning_profiler_times_the_phases(tmp_path, tiny_config, profiler):
    tiny_config["logging"]["profiler"] = profiler
    tiny_config["federation"]["rounds"] = 2
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    written = "".join(p.read_text() for p in result.run_dir.glob("*profile*.txt"))
    assert "local_train" in written and "aggregate" in written


def test_an_unknown_or_missing_logger_is_a_config_error(tmp_path, tiny_config):
    tiny_config["logging"]["loggers"] = ["tensorbored"]
    with pytest.raises(ConfigError, match=r"logging.loggers\[0\].name = 'tensorbored'.*csv, tensorboard"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)


def test_local_evaluation_and_the_round_schedule(tmp_path, tiny_config):
    tiny_config["evaluation"] = {"every": 2, "local": True}
    tiny_config["federation"]["rounds"] = 4
    tiny_config["training"]["scheduler"] = {"name": "step", "step_size": 2, "gamma": 0.5}
    history = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path).history
    assert [("test_acc" in r) for r in history] == [False, True, False, True]
    assert all(0 <= r["local_acc"] <= 1 for r in history)
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.05, 0.05])
