"""SCAFFOLD (a built-in since it left contrib) against its definition."""

from __future__ import annotations

import torch

from flcore.engine.state_store import read_checkpoint
from flcore.testing import check_aggregator, run_tiny_experiment, tiny_config


def test_scaffold_honours_the_aggregator_interface():
    check_aggregator("scaffold")


def test_first_round_is_fedavg_and_control_variates_follow_option_2(tmp_path):
    """With c = c_i = 0 the first round's corrections vanish, so it equals uniform FedAvg; then
    c_i = -(y_i - x) / (K lr) and c = |S|/N * mean(c_i)."""
    config = tiny_config(rounds=1, sampler="all", agents=4)
    config["training"] = {"epochs": 1, "batch_size": None, "optimizer": {"name": "sgd", "lr": 0.1}}
    scaffold = run_tiny_experiment(
        tmp_path / "s", config | {"federation": config["federation"] | {"aggregator": "scaffold"}}
    )
    fedavg = run_tiny_experiment(
        tmp_path / "f",
        config | {"federation": config["federation"] | {"aggregator": {"name": "fedavg", "weighted": False}}},
    )
    for name, value in fedavg.state_dict.items():
        torch.testing.assert_close(scaffold.state_dict[name], value)
    checkpoint = read_checkpoint(scaffold.run_dir)
    variates = checkpoint["sparse"]["scaffold_c"]
    assert sorted(variates) == [0, 1, 2, 3]
    server_c = checkpoint["state"]["components"]["aggregator"]["c"]
    torch.testing.assert_close(server_c, torch.stack([variates[a] for a in range(4)]).mean(0))


def test_scaffold_learns_on_non_iid_shards(tmp_path):
    config = tiny_config(rounds=8, aggregator="scaffold", partitioner={"name": "niid", "niid_factor": 2})
    result = run_tiny_experiment(tmp_path, config)
    assert result.history[-1]["test_acc"] > 0.5


def test_a_resumed_scaffold_run_keeps_every_control_variate(tmp_path):
    """c_i live in the population: a run stopped after 2 rounds and resumed equals a straight run."""
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    config = validate_config(tiny_config(rounds=4, aggregator="scaffold", agents=6))
    straight = Experiment(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=2)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
