"""The MLflow logger against a real local tracking store: params, per-round metrics, artifacts and
plugin provenance, read back through MLflow's own client and compared with the run folder."""

from __future__ import annotations

import pytest

from flcore.config import validate_config
from flcore.engine.rundir import read_csv
from flcore.experiment import Experiment

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (it is in the 'test' extra)")


def test_mlflow_holds_what_the_run_folder_holds(tmp_path, tiny_config, monkeypatch):
    from importlib.metadata import version

    from mlflow.tracking import MlflowClient

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # nothing may land in the current folder
    uri = f"sqlite:///{tmp_path / 'tracking.db'}"  # a shared local store, named by the user's environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny_config["logging"]["loggers"] = ["csv", "mlflow"]
    tiny_config["federation"]["aggregator"] = {"name": "fedavgm", "momentum": 0.5}
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "runs", progress=False)
    artifacts_at = (result.run_dir / "logs" / "mlartifacts").resolve().as_uri()

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["seed"] == "3" and params["federation/rounds"] == "3"
    assert params["federation/aggregator/name"] == "fedavgm" and params["federation/aggregator/momentum"] == "0.5"
    assert params["training/optimizer/lr"] == "0.1" and float(params["partition/agents"]) == 8

    rows = read_csv(result.run_dir / "metrics.csv")
    columns = [c for c in rows[0] if c not in ("round", "seconds")]  # seconds is written after logging
    assert {"train_loss", "test_loss", "test_acc", "agents_seen", "memory/peak_rss_mib"} <= set(columns)
    for column in columns:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, column))
        assert history == [(int(r["round"]), float(r[column])) for r in rows if r[column] != ""], column
    assert any(key.startswith("agent_") and key.endswith("/train_loss") for key in run.data.metrics)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "metrics.csv", "summary.json", "plugins.json", "partition.json",
                         "sampling.csv"}
    for name in ("config.yaml", "summary.json", "plugins.json"):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path / "downloaded"))
        assert open(local, "rb").read() == (result.run_dir / name).read_bytes(), name

    assert run.info.artifact_uri.startswith(artifacts_at) and list((tmp_path / "cwd").iterdir()) == []

    tags = run.data.tags
    assert tags["flcore.distribution.flcore"] == version("flcore")
    assert tags["flcore.aggregator"] == f"fedavgm (flcore {version('flcore')})"
    assert tags["flcore.dataset"] == f"digits (flcore {version('flcore')})"


def test_the_default_mlflow_store_and_artifacts_are_in_the_run_folder(tmp_path, tiny_config, monkeypatch):
    """MLflow 3 refuses its file store by default, so flcore's default must not be one; and MLflow would
    put the artifacts in ./mlruns of whatever folder the run was started from."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    tiny_config["logging"]["loggers"] = ["mlflow"]
    tiny_config["federation"]["rounds"] = 1
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "runs", progress=False)
    client = MlflowClient(f"sqlite:///{result.run_dir / 'logs' / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == "tiny"])
    assert run.info.artifact_uri.startswith((result.run_dir / "logs" / "mlartifacts").resolve().as_uri())
    assert (result.run_dir / "logs" / "mlartifacts").is_dir() and list((tmp_path / "cwd").iterdir()) == []
