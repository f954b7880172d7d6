"""Per-agent evaluation and the personalization methods (fine-tuning, FedPer, FedRep, Ditto, FedBN)
against references of their update rules written here in plain PyTorch, with their per-agent state
across two rounds and a resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from torch import nn

from flcore import hookimpl, seeding
from flcore.cli import main
from flcore.config import validate_config
from flcore.engine.assembly import build_partition
from flcore.engine.personal import split_holdout
from flcore.engine.state_store import read_checkpoint
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.models import ClassifierModule
from flcore.params import NoParams
from flcore.testing import tiny_config, validate_exit

LR = 0.1
HOLDOUT = 0.25


def bn_mlp(params: NoParams, spec) -> ClassifierModule:
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                          nn.Linear(8, spec.num_classes)))


class Models:
    @staticmethod
    @hookimpl
    def register_models(register):
        register("bn_mlp", bn_mlp, "Test model: an MLP with BatchNorm.")


def config_for(plugins: list, model="logistic", agents: int = 4, rounds: int = 2, epochs: int = 2) -> dict:
    """Every agent every round, full-batch SGD (batch order cannot matter), a Dirichlet label skew,
    a quarter of each shard held out and every agent scored every round."""
    config = tiny_config(agents=agents, rounds=rounds, sampler="all", agent_plugins=plugins,
                         partitioner={"name": "dirichlet", "alpha": 0.5})
    config["model"] = model
    config["training"] = {"epochs": epochs, "batch_size": None, "optimizer": {"name": "sgd", "lr": LR}}
    config["evaluation"] = {"holdout": HOLDOUT, "per_agent_every": 1}
    return config


def experiment_of(config: dict) -> Experiment:
    return Experiment(validate_config(config), plugins=[("test", Models)])


def setting(config: dict):
    """The data, each agent's training and held-out (x, y), and the initial model, as a run builds them."""
    experiment = experiment_of(config)
    data = experiment.components["dataset"].build()
    partition = build_partition(experiment.config, experiment.components, data)
    train, held = split_holdout(partition, np.asarray(data.train_labels), HOLDOUT,
                                seeding.numpy_rng(experiment.config.seed, seeding.PARTITION, 1))
    seeding.seed_torch(experiment.config.seed, seeding.INIT)
    model = experiment.components["model"].build(data.spec)

    def tensors(part):
        return [(data.transform(data.x_train[torch.from_numpy(part.shard(a))]),
                 data.y_train[torch.from_numpy(part.shard(a))]) for a in range(part.num_agents)]

    return experiment, tensors(train), tensors(held), model


def sgd(model: nn.Module, params: list[torch.Tensor], x, y, steps: int, lr: float = LR, extra=None) -> None:
    """``steps`` full-batch SGD steps of ``params`` of ``model`` (cross-entropy plus ``extra()``)."""
    optimizer = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        if extra is not None:
            loss = loss + extra()
        model.zero_grad()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).sum().item() / len(y)
    model.train()
    return acc


def summary(accs: list[float], sizes: list[int]) -> dict[str, float]:
    acc = np.array(accs)
    return {"agent_acc_mean": acc.mean(), "agent_acc_weighted": np.average(acc, weights=sizes),
            "agent_acc_p10": np.percentile(acc, 10), "agent_acc_std": acc.std(),
            "agent_acc_range": acc.max() - acc.min()}


def assert_row(row: dict, accs: list[float], held) -> None:
    expected = summary(accs, [len(y) for _, y in held])
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-9), key
    assert row["agents_evaluated"] == len(held)


def fedavg(global_model: nn.Module, locals_: list[nn.Module], sizes: list[int]) -> None:
    """The global model's parameters <- the sample-weighted mean of the agents'."""
    weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
    with torch.no_grad():
        for name, p in global_model.named_parameters():
            p.copy_(sum(w * dict(m.named_parameters())[name] for w, m in zip(weights, locals_)))


def assert_model(result, model: nn.Module, rtol=1e-5, atol=1e-6) -> None:
    for name, value in model.state_dict().items():
        torch.testing.assert_close(result.state_dict[name], value, rtol=rtol, atol=atol, msg=name)


# ------------------------------------------------------------------------------------ the split
def test_the_holdout_is_stratified_disjoint_seeded_and_not_trained_on(tmp_path):
    labels = np.random.default_rng(3).integers(0, 5, size=400)
    from flcore.partition import Partition

    partition = Partition.from_assignment(np.random.default_rng(4).integers(0, 6, size=400), 6)
    train, held = split_holdout(partition, labels, 0.3, np.random.default_rng(5))
    again_train, again_held = split_holdout(partition, labels, 0.3, np.random.default_rng(5))
    assert np.array_equal(train.indices, again_train.indices) and np.array_equal(held.indices, again_held.indices)
    other = split_holdout(partition, labels, 0.3, np.random.default_rng(6))[1]
    assert not np.array_equal(other.indices, held.indices)
    for agent in range(6):
        shard, t, h = partition.shard(agent), train.shard(agent), held.shard(agent)
        assert not set(t) & set(h) and sorted(np.r_[t, h]) == sorted(shard)
        assert np.array_equal(t, shard[np.isin(shard, t)])  # the training part keeps the shard's order
        for c in range(5):
            count = int((labels[shard] == c).sum())
            expected = min(int(np.floor(0.3 * count + 0.5)), max(count - 1, 0))
            assert int((labels[h] == c).sum()) == expected, (agent, c)

    # a run trains on the training part only: sampling.csv counts it
    config = config_for([], rounds=1)
    _, train_xy, held_xy, _ = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    samples = [int(line.split(",")[2]) for line in (result.run_dir / "sampling.csv").read_text().splitlines()[1:]]
    assert samples == [len(y) for _, y in train_xy]
    assert all(len(y) > 0 for _, y in held_xy)


# ------------------------------------------------------------------------------------ evaluation
def test_per_agent_metrics_are_the_global_models_accuracy_on_each_split(tmp_path):
    """No plugin: FedAvg on the training parts (the global model checks that agents train on them
    only), and each agent's row metrics from plain PyTorch on its held-out split."""
    config = config_for([])
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    for r in range(2):
        locals_ = []
        for x, y in train:
            local = copy.deepcopy(model)
            sgd(local, list(local.parameters()), x, y, steps=2)
            locals_.append(local)
        fedavg(model, locals_, [len(y) for _, y in train])
        assert_row(result.history[r], [accuracy(model, x, y) for x, y in held], held)
    assert_model(result, model)


def test_finetune_scores_k_steps_from_the_global_model_and_never_sends_them(tmp_path):
    config = config_for([{"name": "finetune", "steps": 2, "lr": 0.05}])
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    plain = experiment_of(config_for([])).run(out_dir=tmp_path / "plain", progress=False)
    for name, value in plain.state_dict.items():  # training is untouched
        assert torch.equal(result.state_dict[name], value), name
    model.load_state_dict(result.state_dict)
    accs = []
    for (x, y), (hx, hy) in zip(train, held):
        tuned = copy.deepcopy(model)
        sgd(tuned, list(tuned.parameters()), x, y, steps=2, lr=0.05)
        accs.append(accuracy(tuned, hx, hy))
    assert_row(result.history[-1], accs, held)
    assert result.history[-1]["agent_acc_mean"] != plain.history[-1]["agent_acc_mean"]


# ------------------------------------------------------------------------------------ FedPer / FedRep
@pytest.mark.parametrize("method", ["fedper", "fedrep"])
def test_a_personal_head_follows_its_update_rule_over_two_rounds(tmp_path, method):
    """Body aggregated (FedAvg over the body only), head kept per agent and never averaged; FedRep
    trains the head alone first (head_epochs), then the body alone."""
    plugin = {"name": method, "head": ["net.3"]} | ({"head_epochs": 2} if method == "fedrep" else {})
    config = config_for([plugin], model={"name": "mlp", "hidden": [8]})
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    head = model.net[3]
    heads = [copy.deepcopy(head.state_dict()) for _ in train]
    for r in range(2):
        locals_ = []
        for k, (x, y) in enumerate(train):
            local = copy.deepcopy(model)
            local.net[3].load_state_dict(heads[k])
            body = [p for n, p in local.named_parameters() if not n.startswith("net.3")]
            if method == "fedrep":
                sgd(local, list(local.net[3].parameters()), x, y, steps=2)
                sgd(local, body, x, y, steps=2)
            else:
                sgd(local, list(local.parameters()), x, y, steps=2)
            heads[k] = copy.deepcopy(local.net[3].state_dict())
            locals_.append(local)
        initial_head = copy.deepcopy(head.state_dict())
        fedavg(model, locals_, [len(y) for _, y in train])
        head.load_state_dict(initial_head)  # the head's update is zero: never averaged
        accs = []
        for k, (hx, hy) in enumerate(held):
            personal = copy.deepcopy(model)
            personal.net[3].load_state_dict(heads[k])
            accs.append(accuracy(personal, hx, hy))
        assert_row(result.history[r], accs, held)
    assert_model(result, model)
    stored = read_checkpoint(result.run_dir)["sparse"][f"{method}_head"]
    for k in range(len(train)):
        expected = torch.cat([heads[k]["weight"].reshape(-1), heads[k]["bias"]])
        torch.testing.assert_close(stored[k], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ Ditto
def test_ditto_trains_a_proximal_personal_model_beside_the_global_update(tmp_path):
    lam = 0.5
    config = config_for([{"name": "ditto", "lam": lam}])
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    personal = [None] * len(train)
    for r in range(2):
        anchor = [p.detach().clone() for p in model.parameters()]
        locals_ = []
        for k, (x, y) in enumerate(train):
            local = copy.deepcopy(model)
            sgd(local, list(local.parameters()), x, y, steps=2)
            locals_.append(local)
            v = copy.deepcopy(model) if personal[k] is None else personal[k]
            sgd(v, list(v.parameters()), x, y, steps=2,
                extra=lambda v=v, anchor=anchor: lam / 2 * sum(((p - a) ** 2).sum() for p, a in zip(v.parameters(), anchor)))
            personal[k] = v
        fedavg(model, locals_, [len(y) for _, y in train])
        assert_row(result.history[r], [accuracy(v, hx, hy) for v, (hx, hy) in zip(personal, held)], held)
    assert_model(result, model)
    stored = read_checkpoint(result.run_dir)["sparse"]["ditto_personal"]
    for k, v in enumerate(personal):
        torch.testing.assert_close(stored[k], torch.cat([p.detach().reshape(-1) for p in v.parameters()]),
                                   rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ FedBN
def test_fedbn_keeps_batchnorm_weights_and_statistics_with_each_agent(tmp_path):
    config = config_for(["fedbn"], model="bn_mlp")
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    norm = model.net[2]
    states = [copy.deepcopy(norm.state_dict()) for _ in train]
    for r in range(2):
        locals_ = []
        for k, (x, y) in enumerate(train):
            local = copy.deepcopy(model)
            local.net[2].load_state_dict(states[k])
            sgd(local, list(local.parameters()), x, y, steps=2)
            states[k] = copy.deepcopy(local.net[2].state_dict())
            locals_.append(local)
        initial = copy.deepcopy(norm.state_dict())
        fedavg(model, locals_, [len(y) for _, y in train])
        norm.load_state_dict(initial)  # neither averaged nor replaced by the agents' statistics
        accs = []
        for k, (hx, hy) in enumerate(held):
            personal = copy.deepcopy(model)
            personal.net[2].load_state_dict(states[k])
            accs.append(accuracy(personal, hx, hy))
        assert_row(result.history[r], accs, held)
    assert_model(result, model)
    sparse = read_checkpoint(result.run_dir)["sparse"]
    for k, state in enumerate(states):
        torch.testing.assert_close(sparse["fedbn_params"][k], torch.cat([state["weight"], state["bias"]]),
                                   rtol=1e-5, atol=1e-6)
        buffers = torch.cat([state["running_mean"].double(), state["running_var"].double(),
                             state["num_batches_tracked"].double().reshape(1)])
        torch.testing.assert_close(sparse["fedbn_buffers"][k], buffers, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize(
    ("plugins", "model"),
    [
        ([{"name": "fedper", "head": ["net.3"]}, {"name": "finetune", "steps": 1}], {"name": "mlp", "hidden": [8]}),
        ([{"name": "fedrep", "head": ["net.3"]}], {"name": "mlp", "hidden": [8]}),
        ([{"name": "ditto", "lam": 0.2}], "logistic"),
        (["fedbn"], "bn_mlp"),
        ([{"name": "perfedavg", "alpha": 0.05, "variant": "hf", "adapt_steps": 2}], {"name": "mlp", "hidden": [8]}),
        ([{"name": "pfedme", "lam": 2.0, "inner_steps": 2, "personal_lr": 0.05}], {"name": "mlp", "hidden": [8]}),
    ],
    ids=["fedper+finetune", "fedrep", "ditto", "fedbn", "perfedavg", "pfedme"],
)
def test_run_3_then_resume_2_equals_run_5(tmp_path, plugins, model):
    """Agents that sat out rounds keep their personal state (pFedMe's personal models, ...) through
    a stop after round 3; the per-agent metrics (which read it) agree bit for bit."""
    config = config_for(plugins, model=model, agents=5, rounds=5, epochs=1)
    config["federation"]["sampler"] = {"name": "uniform", "count": 2}
    config["training"]["batch_size"] = 32
    straight = experiment_of(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = experiment_of(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=3)
    resumed = experiment_of(config).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    columns = ["test_acc", "agent_acc_mean", "agent_acc_p10", "agent_acc_std"]
    assert [[r[c] for c in columns] for r in resumed.history] == [[r[c] for c in columns] for r in straight.history]


def test_personal_state_beyond_the_memory_budget_gives_the_same_run(tmp_path):
    """Ditto's personal models (2.6 kB each) with room for one in memory: the rest wait on disk
    (federation.agent_state_memory_mb), and the model and per-agent metrics are unchanged."""
    config = config_for([{"name": "ditto", "lam": 0.2}], agents=5, rounds=3, epochs=1)
    config["federation"]["sampler"] = {"name": "uniform", "count": 3}
    roomy = experiment_of(config).run(out_dir=tmp_path / "a", progress=False)
    config["federation"]["agent_state_memory_mb"] = 0.003
    tight = experiment_of(config).run(out_dir=tmp_path / "b", progress=False)
    assert json.loads((tight.run_dir / "summary.json").read_text())["agent_state"]["values_spilled"] > 0
    for name, value in roomy.state_dict.items():
        assert torch.equal(tight.state_dict[name], value), name
    columns = ["agent_acc_mean", "agent_acc_p10", "agent_loss_mean"]
    assert [[r[c] for c in columns] for r in tight.history] == [[r[c] for c in columns] for r in roomy.history]


def test_a_sample_of_agents_is_evaluated_on_the_schedule(tmp_path):
    config = config_for([], agents=6, rounds=3)
    config["evaluation"].update(per_agent_every=2, per_agent_agents=3)
    _, _, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    assert "agent_acc_mean" not in result.history[0]
    assert [r["agents_evaluated"] for r in result.history[1:]] == [3, 3]
    # the last round's sample: 3 of the 6 agents, drawn from (seed, EVALUATION, round) alone
    chosen = np.sort(seeding.numpy_rng(0, seeding.EVALUATION, 2).choice(6, size=3, replace=False))
    model.load_state_dict(result.state_dict)
    sample = [held[k] for k in chosen]
    assert_row(result.history[-1], [accuracy(model, x, y) for x, y in sample], sample)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"agent_plugins": [{"name": "fedper", "head": ["net.9"]}]},
         "'head' names 'net.9', which is not a module of the model; its modules are: net, net.0, net.1, net.2"),
        ({"agent_plugins": [{"name": "fedrep", "head": ["net.2"]}]}, "'head' names 'net.2', which has no trainable"),
        ({"agent_plugins": [{"name": "fedper", "head": []}]}, "federation.agent_plugins[0].head"),
        ({"agent_plugins": [{"name": "finetune", "steps": 50}]},
         "'steps' = 50 is more steps than a round of local training takes on the smallest training shard"),
        ({"agent_plugins": [{"name": "finetune", "lr": 0}]}, "'federation.agent_plugins[0].lr' = 0"),
        ({"agent_plugins": [{"name": "ditto", "lam": -1}]}, "'federation.agent_plugins[0].lam' = -1"),
        ({"agent_plugins": ["fedbn"]}, "the model has no BatchNorm layer"),
        ({"evaluation": {"holdout": 0.0, "per_agent_every": 1}}, "evaluation.per_agent_every = 1: per-agent"),
        ({"evaluation": {"holdout": 1.0}}, "'evaluation.holdout' = 1.0"),
    ],
)
def test_bad_input_exits_2_naming_the_field(tmp_path, change, expected):
    config = tiny_config()
    config["training"]["batch_size"] = 32
    config["evaluation"] = {"holdout": 0.2}
    for key, value in change.items():
        (config if key == "evaluation" else config["federation"])[key] = (
            config["evaluation"] | value if key == "evaluation" else value)
    assert expected in validate_exit(tmp_path, config)


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        ({"name": "finetune"}, "it trains each agent at evaluation time"),
        ({"name": "fedper", "head": ["net.4"]}, "it loads each agent's own head"),
        ({"name": "fedrep", "head": ["net.4"]}, "it trains the head through agent.fit"),
        ({"name": "ditto"}, "it trains a second, personal model"),
        ({"name": "fedbn"}, "it loads each agent's own BatchNorm weights"),
    ],
)
def test_strict_vectorized_refuses_saying_why(tmp_path, plugin, reason):
    config = tiny_config(agent_plugins=[plugin], backend={"name": "vectorized", "strict": True})
    config["model"] = "bn_mlp"
    name = plugin["name"]
    with pytest.raises(ConfigError, match=f"agent-side plugin '{name}' does not declare vectorizable \\({reason}"):
        experiment_of(config).run(out_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------ report
def test_report_plots_the_per_agent_distribution_over_rounds(tmp_path):
    """The figure's mean line and p10..p90 band are the metrics.csv columns, round by round."""
    from flcore.plots import per_agent_figure
    from flcore.report import read_history
    from flcore.runfiles import RunFiles

    config = config_for([{"name": "finetune", "steps": 1}], agents=5, rounds=3)
    run = experiment_of(config).run(out_dir=tmp_path, progress=False).run_dir
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report" / "per_agent.png").is_file()
    assert "per_agent.png" in (run / "report" / "index.html").read_text()

    history = read_history(RunFiles(run))
    columns = {k: history.column(k) for k in ("agent_acc_mean", "agent_acc_p10", "agent_acc_p90")}
    fig = per_agent_figure([("run", history.step, columns)])
    ax = fig.axes[0]
    mean_line = ax.get_lines()[0]
    assert np.array_equal(mean_line.get_xdata(), [1, 2, 3])
    assert np.allclose(mean_line.get_ydata(), [r["agent_acc_mean"] for r in run_rows(run)])
    band = ax.collections[0].get_paths()[0].vertices
    for r, row in zip([1, 2, 3], run_rows(run)):
        at = band[np.isclose(band[:, 0], r), 1]
        assert np.isclose(at.min(), row["agent_acc_p10"]) and np.isclose(at.max(), row["agent_acc_p90"])
    assert ax.get_ylim() == (0, 1)


def run_rows(run) -> list[dict[str, float]]:
    import csv

    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if k.startswith("agent_acc")} for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------ distributed
DRIVER = '''
import sys
import yaml
from flcore.experiment import Experiment
sys.path.insert(0, sys.argv[3])
from test_personalization import Models
Experiment(yaml.safe_load(open(sys.argv[1])), plugins=[("test", Models)]).run(out_dir=sys.argv[2], progress=False)
'''


@pytest.mark.slow
def test_distributed_over_two_gloo_processes_equals_one_process(tmp_path):
    """Every method's per-agent state, written on whichever process trained the agent, reaches
    rank 0's population: the model and the per-agent metrics match one process bit for bit. Two
    settings in one test: FedRep + Ditto + fine-tuning on an MLP, FedBN on a BatchNorm MLP."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = {
        "mixed": ([{"name": "fedrep", "head": ["net.3"]}, {"name": "ditto", "lam": 0.3}, {"name": "finetune", "steps": 1}],
                  {"name": "mlp", "hidden": [8]}),
        "fedbn": (["fedbn"], "bn_mlp"),
    }
    for name, (plugins, model) in settings.items():
        config = config_for(plugins, model=model, agents=5, rounds=2, epochs=1)
        config["federation"]["sampler"] = {"name": "uniform", "count": 4}
        config["training"]["batch_size"] = 32
        outputs = {}
        for processes in (1, 2):
            if processes == 2:
                config["federation"]["backend"] = "distributed"
                config["runtime"] = {"devices": 2}
            path = tmp_path / f"{name}-{processes}.yaml"
            path.write_text(yaml.safe_dump(config))
            out = tmp_path / f"{name}-{processes}"
            done = subprocess.run([sys.executable, str(driver), str(path), str(out), str(Path(__file__).parent)],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            run = next(out.glob("*/model.pt")).parent
            outputs[processes] = (torch.load(run / "model.pt", weights_only=True), run_rows(run))
        (a, rows_a), (b, rows_b) = outputs[1], outputs[2]
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        assert rows_a == rows_b and rows_a[-1]["agent_acc_mean"] > 0


def test_a_holdout_that_is_never_scored_is_warned_about(tmp_path):
    """Agents lose a share of their training data to a split nobody evaluates: say so."""
    config = tiny_config(rounds=1)
    config["evaluation"] = {"holdout": 0.2}
    with pytest.warns(UserWarning, match="evaluation.per_agent_every is not set"):
        result = Experiment(validate_config(config)).run(out_dir=tmp_path, progress=False)
    assert "agent_acc_mean" not in result.history[-1]
