"""The command line: exit codes, JSON listing, messages without tracebacks, a light --help."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from click.testing import CliRunner

from flcore.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_does_not_import_torch():
    code = "import sys; from flcore.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_list_plugins_json_lists_every_builtin_with_distribution_and_version():
    result = invoke("list-plugins", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = data["components"]
    assert {"kind", "name", "qualified_name", "provided_by", "version", "plugin", "description"} == set(rows[0])
    from importlib.metadata import version

    builtins = [r for r in rows if r["provided_by"] == "flcore"]
    assert all(r["version"] == version("flcore") for r in builtins)
    assert {"fedavg", "digits", "iid", "uniform", "lenet5", "resnet152", "participation"} <= {r["name"] for r in builtins}
    kinds = {r["kind"] for r in builtins}
    from flcore.kinds import kind_names

    assert kinds == set(kind_names())
    assert data["distributions"]["flcore"] == version("flcore")


def test_list_plugins_table_shows_failed_plugins(fake_distribution):
    fake_distribution("broken-plugin", modules={"broken_cli": "raise ImportError('boom')"},
                      entry_points={"main": "broken_cli"})
    result = invoke("list-plugins", "--kind", "sampler")
    assert result.exit_code == 0
    assert "uniform" in result.output and "fedavg" not in result.output
    assert "failed to load" in result.output and "boom" in result.output
    strict = invoke("list-plugins", "--strict")
    assert strict.exit_code == 2 and "boom" in strict.output and "Traceback" not in strict.output


def test_validate_accepts_a_good_config_and_rejects_a_bad_one_with_exit_2(tmp_path, tiny_config):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config))
    result = invoke("validate", str(good))
    assert result.exit_code == 0 and "valid" in result.output
    result = invoke("validate", str(good), "--set", "federation.sampler.fraction=2")
    assert result.exit_code == 2
    assert "sampler 'uniform'" in result.output and "'federation.sampler.fraction' = 2" in result.output
    assert "Traceback" not in result.output


def test_unknown_plugin_in_run_exits_2_with_a_suggestion(tmp_path):
    result = invoke("run", "--set", "federation.aggregator=fedavgm2", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "Did you mean" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_describe_shows_parameters_and_defaults():
    result = invoke("describe", "aggregator", "fedadam")
    assert result.exit_code == 0
    assert "beta1" in result.output and "default 0.9" in result.output
    data = json.loads(invoke("describe", "partitioner", "niid", "--json").output)
    assert data["params"][0]["name"] == "niid_factor" and "shards" in data["doc"].lower()
    from flcore_plugins.models.small import MLPParams

    described = {row["name"]: row for row in json.loads(invoke("describe", "model", "mlp", "--json").output)["params"]}
    assert described["hidden"]["default"] == MLPParams().hidden  # a default_factory's value, not None


def test_schema_is_json_schema_of_the_config():
    schema = json.loads(invoke("schema").output)
    assert {"dataset", "model", "federation", "training"} <= set(schema["properties"])


def test_resume_refuses_overrides_that_would_change_the_experiment(tmp_path):
    result = invoke("run", "--resume", str(tmp_path), "--set", "seed=1")
    assert result.exit_code == 2 and "--resume" in result.output and "seed=1" in result.output


def test_resume_can_extend_a_run_to_more_rounds(tmp_path, tiny_config):
    """3 rounds, then --resume with federation.rounds=5, equals 5 rounds straight."""
    import torch

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    assert invoke("run", str(config), "--out", str(tmp_path / "short")).exit_code == 0
    run_dir = next((tmp_path / "short").iterdir())
    result = invoke("run", "--resume", str(run_dir), "--set", "federation.rounds=5")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["federation"]["rounds"] == 5
    assert invoke("run", str(config), "--set", "federation.rounds=5", "--out", str(tmp_path / "long")).exit_code == 0
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(next((tmp_path / "long").iterdir()) / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_describe_model_counts_parameters_like_the_papers_table_3():
    result = invoke("describe", "model", "resnet152", "--dataset", "cifar10", "--mode", "feature_extract", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["parameter_counts"] == {"trainable": 20_490, "frozen": 58_143_808,
                                                             "total": 58_164_298}
    result = invoke("describe", "model", "lenet5", "--dataset", "mnist")
    assert "trainable 61,706, frozen 0, total 61,706" in result.output
    assert invoke("describe", "aggregator", "fedavg", "--dataset", "mnist").exit_code == 2


def test_train_like_a_federated_run_matches_its_passes_over_the_data(tmp_path, tiny_config):
    from flcore.engine.rundir import read_csv

    tiny_config["federation"].update(rounds=4, sampler={"name": "uniform", "count": 4})  # 4 x 4 of 8 agents
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    assert invoke("run", str(config), "--out", str(tmp_path / "fl")).exit_code == 0
    run_dir = next((tmp_path / "fl").iterdir())
    sampled = read_csv(run_dir / "sampling.csv")
    passes = sum(int(r["times_selected"]) * int(r["samples"]) for r in sampled) / sum(int(r["samples"]) for r in sampled)
    assert abs(passes - 2.0) < 0.01  # each round trains half of the agents once
    result = invoke("train", "--like", str(run_dir), "--out", str(tmp_path / "central"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"{passes:.2f} passes" in result.output
    central = next((tmp_path / "central").iterdir())
    assert central.name.startswith("tiny-central-")
    assert [int(r["epoch"]) for r in read_csv(central / "metrics.csv")] == [1, 2]
