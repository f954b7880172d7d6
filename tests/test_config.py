"""Config loading, overrides and validation errors that name plugin, field, value and expectation."""

from __future__ import annotations

import pytest
import yaml

from flcore.config import apply_overrides, load_config, validate_config, with_defaults
from flcore.errors import ConfigError, PluginError
from flcore.experiment import Experiment


def test_default_config_is_a_federated_experiment():
    config = load_config()
    assert config.federation is not None and config.federation.agents > 1
    assert config.dataset.name == "digits"


def test_yaml_and_toml_load_the_same_config(tmp_path, tiny_config):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config))
    toml = """
name = "tiny"
seed = 3
dataset = "digits"
[model]
name = "mlp"
hidden = [32]
[federation]
agents = 8
rounds = 3
[federation.sampler]
name = "uniform"
count = 4
[training]
batch_size = 32
[training.optimizer]
name = "sgd"
lr = 0.1
[logging]
loggers = ["csv"]
progress = "off"
"""
    (tmp_path / "c.toml").write_text(toml)
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.toml")
    assert a.federation == b.federation
    assert a.model.params == b.model.params == {"hidden": [32]}


def test_overrides_parse_values_and_give_components_parameters(tiny_config):
    data = apply_overrides(with_defaults(tiny_config), ["federation.rounds=7", "federation.aggregator.server_lr=0.5",
                                         "model.hidden=[8, 8]", "training.batch_size=null"])
    config = validate_config(data)
    assert config.federation.rounds == 7
    assert config.federation.aggregator.name == "fedavg" and config.federation.aggregator.params == {"server_lr": 0.5}
    assert config.model.params["hidden"] == [8, 8]
    assert config.training.batch_size is None


def test_malformed_override_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides(tiny_config, ["federation.rounds"])
    with pytest.raises(ConfigError, match="'seed' is 3, not a section"):
        apply_overrides(tiny_config, ["seed.x=1"])


def test_unknown_keys_are_errors_that_name_the_field(tiny_config):
    tiny_config["federation"]["roundz"] = 3
    with pytest.raises(ConfigError, match=r"'federation.roundz' is not a known field"):
        validate_config(tiny_config)


def test_bad_values_name_field_value_and_expectation(tiny_config):
    tiny_config["training"]["optimizer"]["lr"] = -1
    with pytest.raises(ConfigError) as info:
        validate_config(tiny_config)
    assert "'training.optimizer.lr' = -1" in str(info.value) and "greater than 0" in str(info.value)


def test_plugin_parameter_errors_name_plugin_field_value_and_expectation(tiny_config):
    tiny_config["federation"]["aggregator"] = {"name": "fedadam", "beta1": 1.5}
    with pytest.raises(ConfigError) as info:
        Experiment(validate_config(tiny_config))
    message = str(info.value)
    assert "aggregator 'fedadam'" in message and "from flcore" in message
    assert "'federation.aggregator.beta1' = 1.5" in message and "less than 1" in message
    tiny_config["federation"]["aggregator"] = {"name": "fedavg", "wieghted": False}
    with pytest.raises(ConfigError, match="'federation.aggregator.wieghted' is not a known field.*weighted"):
        Experiment(validate_config(tiny_config))


def test_an_unknown_component_in_a_config_suggests_the_closest(tiny_config):
    tiny_config["federation"]["partitioner"] = "dirichlett"
    with pytest.raises(PluginError, match="unknown partitioner 'dirichlett'. Did you mean 'dirichlet'"):
        Experiment(validate_config(tiny_config))


def test_unparseable_files_are_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# ------------------------------------------------- what run rejects, validate rejects (exit 2, field path)
def _cli(*args: str):
    from click.testing import CliRunner

    from flcore.cli import main

    return CliRunner().invoke(main, list(args))


REJECTED_BEFORE_TRAINING = [
    ("logging.loggers=[tensorbored]", "logging.loggers[0].name = 'tensorbored'"),
    ("logging.loggers=[{name: csv, flush_every: 5}]", "logging.loggers[0].flush_every is not an argument"),
    ("logging.loggers=[{name: csv, flush_logs_every_n_steps: often}]",
     "logging.loggers[0].flush_logs_every_n_steps = 'often'"),
    ("logging.loggers=[{name: tensorboard, flushsecs: 5}]", "logging.loggers[0].flushsecs is not an argument"),
    ("model.hidden=[-4]", "'model.hidden.0' = -4"),
    ("model.hidden=[0]", "'model.hidden.0' = 0"),
    ("model={name: cnn, channels: [0, 8]}", "'model.channels.0' = 0"),
    ("model={name: cnn, hidden: true}", "'model.hidden' = True"),
    ("training.optimizer={name: adam, betas: [1.5, 0.9]}", "'training.optimizer.betas' = [1.5, 0.9]"),
    ("training.optimizer.lr=.inf", "'training.optimizer.lr' = inf"),
    ("federation.aggregator={name: fedavg, server_lr: .inf}", "'federation.aggregator.server_lr' = inf"),
    ("runtime.devices=0", "'runtime.devices' = 0"),
    ("runtime.devices=-1", "'runtime.devices' = -1"),
    ("runtime.devices=2", "runtime.devices = 2 (x runtime.num_nodes = 1): backend 'sequential'"),
    ("runtime.precision=17-mixed", "'runtime.precision' = '17-mixed'"),
    ("federation.agents=true", "'federation.agents' = True"),
    ("checkpoint.every=true", "'checkpoint.every' = True"),
]


@pytest.mark.parametrize("override,field", REJECTED_BEFORE_TRAINING)
def test_validate_rejects_what_run_rejects_naming_the_field(tmp_path, tiny_config, override, field):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config | {"federation": tiny_config["federation"] | {"rounds": 1}}))
    checked = _cli("validate", str(config), "--set", override)
    assert checked.exit_code == 2, checked.output
    assert field in checked.output and "Traceback" not in checked.output
    ran = _cli("run", str(config), "--set", override, "--out", str(tmp_path / "runs"))
    assert ran.exit_code == 2, ran.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_lightning_precisions_are_accepted_by_their_names_and_numbers(tiny_config):
    for precision, expected in (("bf16-mixed", "bf16-mixed"), (32, "32"), ("64-true", "64-true")):
        tiny_config["runtime"] = {"precision": precision}
        assert validate_config(tiny_config).runtime.precision == expected


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "name: caf\xe9\n".encode("latin-1")])
def test_a_binary_or_non_utf8_config_is_bad_input(tmp_path, content):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    for command in ("validate", "run"):
        result = _cli(command, str(config), *(["--out", str(tmp_path / "runs")] if command == "run" else []))
        assert result.exit_code == 2, result.output
        assert "is not UTF-8 text" in result.output and str(config) in result.output


def test_yaml_on_and_off_for_progress_mean_what_they_say(tiny_config):
    """YAML 1.1 reads a bare `off` as false: `progress: off` must still mean off."""
    assert validate_config(yaml.safe_load(yaml.safe_dump(tiny_config) + "")).logging.progress == "off"
    text = yaml.safe_dump({k: v for k, v in tiny_config.items() if k != "logging"}) + "logging: {progress: off}\n"
    assert yaml.safe_load(text)["logging"]["progress"] is False
    assert validate_config(yaml.safe_load(text)).logging.progress == "off"
