"""Files a user hands flcore, and files flcore writes: nothing runs, escapes or locks colleagues out."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from flcore.engine.checkpoint import save_torch, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)  # reading the umask means setting it
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_text(tmp_path / "a.txt", "text")
    write_json(tmp_path / "b.json", {"a": 1})
    save_torch({"w": torch.ones(2)}, tmp_path / "c.pt")
    for name in ("a.txt", "b.json", "c.pt"):
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    # a replaced file gets the mode a new one would, and no temporary file is left behind
    write_text(tmp_path / "a.txt", "again")
    assert _mode(tmp_path / "a.txt") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt"]


def test_a_run_folder_is_readable_by_colleagues_under_umask_022(tmp_path, umask, tiny_config):
    from flcore.testing import run_tiny_experiment

    umask(0o022)
    tiny_config["federation"]["rounds"] = 1
    result = run_tiny_experiment(tmp_path, tiny_config)
    files = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert {"config.yaml", "metrics.csv", "checkpoint.pt", "model.pt", "summary.json"} <= {p.name for p in files}
    assert {p.relative_to(result.run_dir).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}


# ------------------------------------------------------------------ names and logger paths
@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".", "", "a b", "x" * 201, "C:\\x", "~"])
def test_a_name_that_is_a_path_is_refused(tiny_config, name):
    from flcore.config import validate_config
    from flcore.errors import ConfigError

    tiny_config["name"] = name
    with pytest.raises(ConfigError) as info:
        validate_config(tiny_config)
    message = str(info.value)
    assert f"'name' = {name!r}" in message
    assert "letters, digits" in message or "at most 200 characters" in message


def test_plain_names_are_accepted(tiny_config):
    from flcore.config import validate_config

    for name in ("digits-niid", "run_2.v3", "A-1", ".hidden"):
        assert validate_config(tiny_config | {"name": name}).name == name


def test_a_run_named_like_a_path_writes_nothing_outside_out(tmp_path, tiny_config):
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    out = tmp_path / "a" / "b" / "out"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config | {"name": "../../escaped"}))
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "'name' = '../../escaped'" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.yaml"]


@pytest.mark.parametrize("logger,key", [
    ({"name": "csv", "save_dir": "/tmp/elsewhere"}, "save_dir"),
    ({"name": "csv", "save_dir": "logs/../../../elsewhere"}, "save_dir"),
    ({"name": "csv", "version": "../../elsewhere"}, "version"),
    ({"name": "tensorboard", "sub_dir": "/tmp/elsewhere"}, "sub_dir"),
    ({"name": "tensorboard", "save_dir": "~/elsewhere"}, "save_dir"),
    ({"name": "tensorboard", "log_dir": "elsewhere"}, "log_dir"),
    ({"name": "tensorboard", "filename_suffix": "/../../x"}, "filename_suffix"),
    ({"name": "mlflow", "tracking_uri": "file:/tmp/mlruns"}, "tracking_uri"),
    ({"name": "mlflow", "tracking_uri": "/tmp/mlruns"}, "tracking_uri"),
    ({"name": "mlflow", "tracking_uri": "sqlite:////tmp/mlflow.db"}, "tracking_uri"),
    ({"name": "mlflow", "artifact_location": "/tmp/artifacts"}, "artifact_location"),
    ({"name": "wandb", "dir": "/tmp/wandb"}, "dir"),
])
def test_logger_arguments_that_leave_the_run_folder_are_refused(tiny_config, logger, key):
    from flcore.config import validate_config
    from flcore.errors import ConfigError

    tiny_config["logging"]["loggers"] = ["csv", logger]
    with pytest.raises(ConfigError) as info:
        validate_config(tiny_config)
    assert f"logging.loggers[1].{key} = {logger[key]!r}" in str(info.value)
    assert "run folder" in str(info.value)


def test_a_remote_mlflow_server_passes_the_place_rule(tiny_config):
    """Only local stores are refused; without mlflow installed what remains is the missing package."""
    import importlib.util

    from flcore.config import validate_config
    from flcore.errors import ConfigError

    tiny_config["logging"]["loggers"] = [{"name": "mlflow", "tracking_uri": "https://mlflow.example.org"}]
    if importlib.util.find_spec("mlflow") is not None:
        assert validate_config(tiny_config).logging.loggers[0].params["tracking_uri"].startswith("https:")
    else:
        with pytest.raises(ConfigError, match=r"logging.loggers\[0\].name = 'mlflow' needs the 'mlflow' package"):
            validate_config(tiny_config)


def test_relative_logger_folders_are_placed_inside_the_run_folder(tmp_path, tiny_config, monkeypatch):
    from flcore.testing import run_tiny_experiment

    monkeypatch.chdir(tmp_path)
    tiny_config["federation"]["rounds"] = 1
    tiny_config["logging"]["loggers"] = [{"name": "csv", "save_dir": "mine", "version": "v1"}]
    result = run_tiny_experiment(tmp_path / "out", tiny_config)
    assert (result.run_dir / "logs" / "mine" / "tiny" / "v1" / "metrics.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_tampered_file_in_the_torch_hub_cache_runs_no_code(tmp_path):
    """torchvision reads cached pretrained weights with weights_only=False and checks hashes only when
    downloading: flcore loads them itself with weights_only=True."""
    import pickle

    import torch
    from torchvision.models import get_model_weights

    from flcore.config import validate_config
    from flcore.errors import ConfigError
    from flcore.experiment import Experiment
    from flcore.testing import tiny_config

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        weights = get_model_weights("resnet18").DEFAULT
        cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        cached.parent.mkdir(parents=True)
        cached.write_bytes(pickle.dumps(Exploit()))
        config = tiny_config(rounds=1)
        config["model"] = {"name": "resnet18", "mode": "finetune", "download": False}
        with pytest.raises(ConfigError, match="could not be loaded"):
            Experiment(validate_config(config)).run(out_dir=tmp_path / "runs")
        assert not marker.exists()
    finally:
        torch.hub.set_dir(previous)
