"""The non-IID optimizers (FedDyn, q-FFL, MOON) against references of their update rules written
here in plain PyTorch or NumPy, with their per-agent state across rounds and a resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from flcore import seeding
from flcore.cli import main
from flcore.config import validate_config
from flcore.engine.assembly import build_partition
from flcore.engine.state_store import read_checkpoint
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.testing import check_aggregator, tiny_config

LR = 0.1


def full_batch_config(aggregator: dict, agents: int = 4, rounds: int = 2, epochs: int = 2) -> dict:
    """Logistic regression on the digits, every agent every round, full-batch SGD steps."""
    config = tiny_config(agents=agents, rounds=rounds, sampler="all", aggregator=aggregator)
    config["model"] = "logistic"
    config["training"] = {"epochs": epochs, "batch_size": None, "optimizer": {"name": "sgd", "lr": LR}}
    return config


def setting(config: dict) -> tuple[Experiment, list[tuple[torch.Tensor, torch.Tensor]], torch.nn.Module]:
    """The experiment, each agent's (inputs, labels) and the initial model, built as a run builds them."""
    experiment = Experiment(validate_config(config))
    data = experiment.components["dataset"].build()
    partition = build_partition(experiment.config, experiment.components, data)
    shards = [torch.from_numpy(partition.shard(a)) for a in range(partition.num_agents)]
    seeding.seed_torch(experiment.config.seed, seeding.INIT)
    model = experiment.components["model"].build(data.spec)
    return experiment, [(data.transform(data.x_train[s]), data.y_train[s]) for s in shards], model


def logits(model: torch.nn.Module, names: list[str], params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(model, dict(zip(names, params)), (x,))


def validate_exit(tmp_path, config: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


# ------------------------------------------------------------------------------------ FedDyn
def test_feddyn_honours_the_aggregator_interface():
    check_aggregator("feddyn", alpha=0.1)


def test_feddyn_follows_its_update_rule_over_two_rounds_with_agent_and_server_state(tmp_path):
    alpha = 0.1
    config = full_batch_config({"name": "feddyn", "alpha": alpha})
    experiment, shards, model = setting(config)
    result = experiment.run(out_dir=tmp_path, progress=False)

    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    m = len(shards)
    grads = [[torch.zeros_like(t) for t in theta] for _ in range(m)]
    h = [torch.zeros_like(t) for t in theta]
    for _ in range(2):
        deltas = []
        for k, (x, y) in enumerate(shards):
            w = [t.clone().requires_grad_() for t in theta]
            optimizer = torch.optim.SGD(w, lr=LR)
            for _ in range(2):
                loss = F.cross_entropy(logits(model, names, w, x), y)
                loss = loss - sum((g * p).sum() for g, p in zip(grads[k], w))
                loss = loss + alpha / 2 * sum(((p - t) ** 2).sum() for p, t in zip(w, theta))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            delta = [p.detach() - t for p, t in zip(w, theta)]
            grads[k] = [g - alpha * d for g, d in zip(grads[k], delta)]
            deltas.append(delta)
        h = [hh - alpha / m * sum(d[i] for d in deltas) for i, hh in enumerate(h)]
        theta = [t + sum(d[i] for d in deltas) / len(deltas) - h[i] / alpha for i, t in enumerate(theta)]

    for name, value in zip(names, theta):
        torch.testing.assert_close(result.state_dict[name], value, rtol=1e-5, atol=1e-6)
    checkpoint = read_checkpoint(result.run_dir)
    stored = checkpoint["sparse"]["feddyn_grad"]
    assert sorted(stored) == list(range(m))
    for k in range(m):
        torch.testing.assert_close(stored[k], torch.cat([g.reshape(-1) for g in grads[k]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        checkpoint["state"]["components"]["aggregator"]["h"],
        torch.cat([x.reshape(-1) for x in h]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_a_resumed_feddyn_run_equals_a_straight_one(tmp_path):
    """g_k of agents that sat out rounds and the server's h survive a stop after round 3."""
    config = full_batch_config({"name": "feddyn", "alpha": 0.05}, agents=6, rounds=5)
    config["federation"]["sampler"] = {"name": "uniform", "count": 2}
    config = validate_config(config)
    straight = Experiment(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=3)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in straight.history]


def test_feddyn_refuses_a_non_positive_alpha_naming_it(tmp_path):
    output = validate_exit(tmp_path, tiny_config(aggregator={"name": "feddyn", "alpha": 0}))
    assert "alpha" in output and "greater than 0" in output


def test_strict_vectorized_refuses_feddyn_saying_why(tmp_path):
    config = tiny_config(aggregator="feddyn", backend={"name": "vectorized", "strict": True})
    with pytest.raises(
        ConfigError,
        match="agent-side plugin 'feddyn_regularizer' does not declare vectorizable "
        r"\(its loss term reads each agent's own state",
    ):
        Experiment(validate_config(config)).run(out_dir=tmp_path, progress=False)
