"""The federated engine: FedAvg against centralized SGD, logs, failure policy, resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flcore import seeding
from flcore.agent_plugin import AgentPlugin
from flcore.config import validate_config
from flcore.engine.rundir import read_csv
from flcore.errors import RunFailure
from flcore.experiment import Experiment


def test_fedavg_with_one_full_batch_step_equals_centralized_gradient_descent(tmp_path, tiny_config):
    """With every agent taking one full-batch step, the sample-weighted mean update is exactly the
    full-batch gradient step over the union of the shards (McMahan et al.'s FedSGD equivalence)."""
    cfg = copy.deepcopy(tiny_config)
    cfg["federation"].update(agents=5, rounds=4, sampler="all", partitioner="quantity_skew")
    cfg["training"] = {"epochs": 1, "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.5}}
    experiment = Experiment(validate_config(cfg))
    result = experiment.run(out_dir=tmp_path)

    data = experiment.components["dataset"].build()
    seeding.seed_torch(cfg["seed"], seeding.INIT)
    model = experiment.components["model"].build(data.spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data.transform(data.x_train), data.y_train
    for _ in range(4):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result.state_dict[name], value, rtol=1e-5, atol=1e-6)


def test_fedavg_learns_the_embedded_digits(tmp_path, tiny_config):
    tiny_config["federation"]["rounds"] = 8
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    accuracies = [row["test_acc"] for row in result.history]
    assert accuracies[-1] > 0.85 and accuracies[-1] > accuracies[0]


def test_run_folder_records_config_plugins_metrics_and_agent_logs(tmp_path, tiny_config):
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    run_dir = result.run_dir
    import json

    import yaml

    assert validate_config(yaml.safe_load((run_dir / "config.yaml").read_text())) == validate_config(tiny_config)
    plugins = json.loads((run_dir / "plugins.json").read_text())
    assert plugins["components"]["aggregator"][0]["provided_by"] == "flcore"
    assert "flcore" in plugins["distributions"]
    rounds = read_csv(run_dir / "metrics.csv")
    assert [int(r["round"]) for r in rounds] == [1, 2, 3]
    agents = read_csv(next((run_dir / "logs" / "agents").glob("version_*/metrics.csv")))
    assert len(agents) == 3 * 4  # rounds x sampled agents x local epochs
    assert {"agent", "round", "epoch", "loss", "acc", "samples"} <= set(agents[0])
    sampled = read_csv(run_dir / "sampling.csv")
    assert sum(int(r["times_selected"]) for r in sampled) == 12
    global_log = read_csv(next((run_dir / "logs" / "tiny").glob("version_*/metrics.csv")))
    assert {"test_acc", "train_loss", "memory/peak_rss_mib"} <= set(global_log[0])
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoint.pt").is_file()


class _FailFor(AgentPlugin):
    """Makes agent 1's local training raise."""

    def on_agent_start(self, agent):
        if agent.agent_id == 1:
            raise RuntimeError("simulated crash")


class _FailingPlugin:
    from flcore import hookimpl

    @staticmethod
    @hookimpl
    def register_agent_plugins(register):
        register("fail_for_one", _FailFor, "Test agent-side plugin.")


def test_agent_failure_policy_fail_names_agent_and_round(tmp_path, tiny_config):
    tiny_config["federation"].update(sampler="all", agent_plugins=["fail_for_one"])
    experiment = Experiment(validate_config(tiny_config), plugins=[("test", _FailingPlugin)])
    with pytest.raises(RunFailure, match="agent 1 failed in round 1.*simulated crash"):
        experiment.run(out_dir=tmp_path)


def test_agent_failure_policy_skip_drops_the_update_and_logs_it(tmp_path, tiny_config):
    tiny_config["federation"].update(sampler="all", agent_plugins=["fail_for_one"], on_agent_failure="skip")
    experiment = Experiment(validate_config(tiny_config), plugins=[("test", _FailingPlugin)])
    with pytest.warns(UserWarning, match="agent 1 failed"):
        result = experiment.run(out_dir=tmp_path)
    assert [row["skipped"] for row in result.history] == [1, 1, 1]
    assert all(np.isfinite(row["test_loss"]) for row in result.history)


def test_non_finite_weights_are_a_failure(tmp_path, tiny_config):
    tiny_config["training"]["optimizer"]["lr"] = 1e30
    with pytest.raises(RunFailure, match="non-finite"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)


def test_batchnorm_buffers_are_sample_weighted_means():
    from flcore.engine.buffers import average_buffers
    from flcore.protocol import AgentResult as ClientUpdate

    a = {"bn.running_mean": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(3)}
    b = {"bn.running_mean": torch.tensor([4.0, 8.0]), "bn.num_batches_tracked": torch.tensor(5)}
    updates = [ClientUpdate(0, torch.zeros(1), 10, buffers=a), ClientUpdate(1, torch.zeros(1), 30, buffers=b)]
    out = average_buffers({k: torch.zeros_like(v) for k, v in a.items()}, updates)
    torch.testing.assert_close(out["bn.running_mean"], torch.tensor([0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8]))
    assert int(out["bn.num_batches_tracked"]) == 5


def test_resume_continues_exactly_where_a_run_stopped(tmp_path, tiny_config):
    """Stateful server, stateful sampler and dropout: a resumed run ends bit-identical."""
    tiny_config["federation"].update(rounds=4, aggregator={"name": "fedadam", "server_lr": 0.05},
                                     sampler={"name": "round_robin", "count": 3})
    tiny_config["model"]["dropout"] = 0.2
    config = validate_config(tiny_config)
    straight = Experiment(config).run(out_dir=tmp_path / "a")
    first = Experiment(config).run(out_dir=tmp_path / "b", stop_after_rounds=2)
    assert first.final["rounds_completed"] == 2
    resumed = Experiment(config).run(resume_dir=first.run_dir)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in straight.history]


def test_federated_feature_extraction_moves_only_the_head(tmp_path, tiny_config):
    tiny_config["model"] = {"name": "resnet18", "mode": "feature_extract", "weights": "none"}
    tiny_config["federation"]["rounds"] = 2
    experiment = Experiment(validate_config(tiny_config))
    result = experiment.run(out_dir=tmp_path)
    data = experiment.components["dataset"].build()
    seeding.seed_torch(tiny_config["seed"], seeding.INIT)
    initial = experiment.components["model"].build(data.spec).state_dict()
    changed = {k for k, v in result.state_dict.items() if not torch.equal(v, initial[k])}
    assert changed == {"net.backbone.fc.weight", "net.backbone.fc.bias"}
    assert result.final["parameters"]["trainable"] == 512 * 10 + 10


def test_centralized_training_uses_the_same_datamodule_and_model(tmp_path, tiny_config):
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(main, ["train", str(config), "--set", "training.epochs=3", "--out", str(tmp_path),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.glob("tiny-*"))
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["test_acc"]) > 0.85
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["federation"] is None and saved["training"]["epochs"] == 3


def test_agent_metadata_persists_across_rounds_and_is_checkpointed(tmp_path, tiny_config):
    from flcore.engine.state_store import read_checkpoint
    from flcore.registry import discover

    assert discover().resolve("agent_metadata", "participation").provider == "flcore"
    tiny_config["federation"].update(rounds=4, agent_metadata=["participation"])
    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    columns = read_checkpoint(result.run_dir)["columns"]
    selected = [int(r["times_selected"]) for r in read_csv(result.run_dir / "sampling.csv")]
    assert columns["times_selected"].tolist() == selected and sum(selected) == 16
    trained = columns["last_round"] > 0
    assert (columns["last_round"][trained] <= 4).all() and np.isfinite(columns["last_loss"][trained]).all()
    assert np.isnan(columns["last_loss"][~trained]).all()


def test_only_the_agent_metadata_a_run_asks_for_is_enabled(tmp_path, tiny_config):
    """Installed metadata plugins are not switched on for every run: only listed or required ones."""
    from flcore.engine.state_store import read_checkpoint

    result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    assert set(read_checkpoint(result.run_dir)["columns"]) == {"selected_count"}


def test_data_a_component_rejects_is_bad_input_and_leaves_no_run_folder(tmp_path, tiny_config):
    from flcore.errors import ConfigError

    tiny_config["federation"].update(agents=8, partitioner={"name": "niid", "niid_factor": 1000})
    with pytest.raises(ConfigError, match="federation.partitioner 'niid' cannot be used here: .*more than"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    tiny_config["federation"]["partitioner"] = "iid"
    tiny_config["model"] = "lenet5"
    with pytest.raises(ConfigError, match="model 'lenet5' cannot be used here: .*at least 28x28"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_agent_keeps_its_original_error_as_the_cause(tmp_path, tiny_config):
    tiny_config["federation"].update(sampler="all", agent_plugins=["fail_for_one"])
    experiment = Experiment(validate_config(tiny_config), plugins=[("test", _FailingPlugin)])
    with pytest.raises(RunFailure) as info:
        experiment.run(out_dir=tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError) and "simulated crash" in str(info.value.__cause__)
