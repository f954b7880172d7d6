"""The non-IID optimizers (FedDyn, q-FFL, MOON) against references of their update rules written
here in plain PyTorch or NumPy, with their per-agent state across rounds and a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flcore import seeding
from flcore.config import validate_config
from flcore.engine.assembly import build_partition
from flcore.engine.state_store import read_checkpoint
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.protocol import AgentResult
from flcore.testing import build, check_aggregator, round_context, tiny_config, validate_exit

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


def straight_and_resumed(config, tmp_path):
    """A 5-round run, and the same run stopped after round 3 and resumed: their models must agree
    bit for bit (the method's per-agent and server state survive the checkpoint)."""
    straight = Experiment(config).run(out_dir=tmp_path / "a", progress=False)
    stopped = Experiment(config).run(out_dir=tmp_path / "b", progress=False, stop_after_rounds=3)
    resumed = Experiment(config).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    return straight, resumed


def test_a_resumed_feddyn_run_equals_a_straight_one(tmp_path):
    """g_k of agents that sat out rounds and the server's h survive a stop after round 3."""
    config = full_batch_config({"name": "feddyn", "alpha": 0.05}, agents=6, rounds=5)
    config["federation"]["sampler"] = {"name": "uniform", "count": 2}
    config = validate_config(config)
    straight, resumed = straight_and_resumed(config, tmp_path)
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in straight.history]


@pytest.mark.parametrize(
    ("aggregator", "field", "expected"),
    [
        ({"name": "feddyn", "alpha": 0}, "alpha", "greater than 0"),
        ({"name": "qffl", "q": -1}, "q", "greater than or equal to 0"),
    ],
)
def test_bad_parameters_exit_2_naming_the_field(tmp_path, aggregator, field, expected):
    output = validate_exit(tmp_path, tiny_config(aggregator=aggregator))
    assert f"federation.aggregator.{field}' = {aggregator[field]}" in output and expected in output


@pytest.mark.parametrize(
    ("moon", "expected"),
    [
        ({"tau": 0}, "'federation.agent_plugins[0].tau' = 0: Input should be greater than 0"),
        ({"mu": -1}, "'federation.agent_plugins[0].mu' = -1: Input should be greater than or equal to 0"),
        (
            {"layer": "net.9"},
            "'layer' = 'net.9' is not a module of the model; its modules are: net, net.0, net.1, net.2",
        ),
    ],
)
def test_bad_moon_parameters_exit_2_naming_the_field(tmp_path, moon, expected):
    output = validate_exit(tmp_path, tiny_config(agent_plugins=[{"name": "moon", **moon}]))
    assert expected in " ".join(output.split()), output


@pytest.mark.parametrize(
    ("aggregator", "plugin", "reason"),
    [
        ("feddyn", "feddyn_regularizer", "its loss term reads each agent's own state"),
        ("qffl", "qffl_loss", "it scores the global model on each agent's shard"),
        ("fedavg", "moon", "its loss term runs the global and previous models on the batch"),
    ],
)
def test_strict_vectorized_refuses_saying_why(tmp_path, aggregator, plugin, reason):
    config = tiny_config(aggregator=aggregator, backend={"name": "vectorized", "strict": True})
    if plugin == "moon":
        config["federation"]["agent_plugins"] = ["moon"]
    with pytest.raises(ConfigError, match=f"agent-side plugin '{plugin}' does not declare vectorizable \\({reason}"):
        Experiment(validate_config(config)).run(out_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------ q-FFL
def qffl_reference(w: np.ndarray, deltas: np.ndarray, losses: np.ndarray, q: float, lr: float) -> np.ndarray:
    """Algorithm 2 of Li et al. 2020 as written, with F_k + 1e-10 as in the paper's code."""
    lipschitz = 1.0 / lr
    big_deltas = lipschitz * -deltas  # Delta_k = L (w^t - w_k)
    f = losses + 1e-10
    h = q * f ** (q - 1) * (big_deltas**2).sum(axis=1) + lipschitz * f**q
    return w - (f[:, None] ** q * big_deltas).sum(axis=0) / h.sum()


def qffl_updates(seed: int = 0, count: int = 5, dim: int = 11):
    rng = np.random.default_rng(seed)
    deltas, losses = rng.normal(scale=0.1, size=(count, dim)), rng.uniform(0.1, 3.0, size=count)
    sizes = rng.integers(5, 60, size=count)
    make = lambda: [  # noqa: E731
        AgentResult(k, torch.tensor(d), int(n), extra={"qffl_loss/loss": float(f)})
        for k, (d, f, n) in enumerate(zip(deltas, losses, sizes))
    ]
    return deltas, losses, make


@pytest.mark.parametrize("q", [0.5, 1.0, 5.0])
@pytest.mark.parametrize("streamed", [True, False])
def test_qffl_follows_algorithm_2(q, streamed):
    deltas, losses, make = qffl_updates()
    w = np.random.default_rng(1).normal(size=deltas.shape[1])
    strategy = build("aggregator", "qffl", q=q)
    updates = make()
    if streamed:
        for update in updates:
            strategy.accumulate(update)
    out = strategy.aggregate(torch.tensor(w), updates, round_context(dim=deltas.shape[1], lr=0.05))
    np.testing.assert_allclose(out.vector.numpy(), qffl_reference(w, deltas, losses, q, 0.05), rtol=1e-12)
    assert out.metrics == pytest.approx({"mean_loss": losses.mean(), "max_loss": losses.max()})


def test_qffl_with_q_0_is_uniform_fedavg_not_the_sample_weighted_one():
    """q = 0: h_k = L, so w - sum_k L (w - w_k) / (m L) = mean_k w_k, whatever the losses and the
    learning rate: FedAvg with equal weights (weighted: false), not weighted by sample counts."""
    deltas, losses, make = qffl_updates(seed=2)
    w = torch.zeros(deltas.shape[1], dtype=torch.float64)
    context = round_context(dim=deltas.shape[1], lr=0.3)
    qffl = build("aggregator", "qffl", q=0).aggregate(w, make(), context).vector
    uniform = build("aggregator", "fedavg", weighted=False)
    weighted = build("aggregator", "fedavg")
    torch.testing.assert_close(qffl, uniform.aggregate(w, make(), context), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(qffl, torch.tensor(deltas.mean(axis=0)), rtol=1e-12, atol=1e-15)
    assert not torch.allclose(qffl, weighted.aggregate(w, make(), context))


def test_qffl_over_two_rounds_weighs_agents_by_their_loss_at_the_global_model(tmp_path):
    q = 2.0
    config = full_batch_config({"name": "qffl", "q": q})
    experiment, shards, model = setting(config)
    result = experiment.run(out_dir=tmp_path, progress=False)

    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    for r in range(2):
        deltas, losses = [], []
        for x, y in shards:
            with torch.no_grad():
                losses.append(float(F.cross_entropy(logits(model, names, theta, x), y)))
            w = [t.clone().requires_grad_() for t in theta]
            optimizer = torch.optim.SGD(w, lr=LR)
            for _ in range(2):
                optimizer.zero_grad()
                F.cross_entropy(logits(model, names, w, x), y).backward()
                optimizer.step()
            deltas.append(torch.cat([(p.detach() - t).reshape(-1) for p, t in zip(w, theta)]).double().numpy())
        flat = torch.cat([t.reshape(-1) for t in theta]).double().numpy()
        new = qffl_reference(flat, np.stack(deltas), np.array(losses), q, LR)
        theta = [
            torch.from_numpy(c).float().view_as(t)
            for c, t in zip(np.split(new, np.cumsum([t.numel() for t in theta])[:-1]), theta)
        ]
        assert result.history[r]["qffl/mean_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    for name, value in zip(names, theta):
        torch.testing.assert_close(result.state_dict[name], value, rtol=1e-5, atol=1e-6)


def test_a_resumed_qffl_run_equals_a_straight_one(tmp_path):
    config = full_batch_config({"name": "qffl", "q": 1.0}, agents=6, rounds=5)
    config["federation"]["sampler"] = {"name": "uniform", "count": 2}
    config = validate_config(config)
    straight_and_resumed(config, tmp_path)


# ------------------------------------------------------------------------------------ MOON
def hidden_of(x: torch.Tensor, weights: list[torch.Tensor], activation=torch.relu) -> torch.Tensor:
    """The MLP's hidden layer, written out: relu(x W1^T + b1)."""
    return activation(x.flatten(1) @ weights[0].T + weights[1])


def moon_term(z: torch.Tensor, z_global: torch.Tensor, z_previous: torch.Tensor, mu: float, tau: float):
    """Equation 3 of Li et al. 2021, written out."""
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    positive, negative = torch.exp(cos(z, z_global) / tau), torch.exp(cos(z, z_previous) / tau)
    return mu * -torch.log(positive / (positive + negative)).mean()


@pytest.mark.parametrize("layer", ["net.1", None])  # the hidden layer's output, or the last layer's input
def test_moon_loss_term_is_equation_3_on_a_tiny_model(layer):
    from flcore.agents import AgentPopulation
    from flcore.models import ClassifierModule
    from flcore.partition import Partition
    from flcore.protocol import AgentContext, AgentState, Instruction

    torch.manual_seed(0)
    model = ClassifierModule(torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)))
    params = list(model.parameters())
    global_params = [p.detach() + 0.3 * torch.randn_like(p) for p in params]
    previous = [p.detach() + 0.5 * torch.randn_like(p) for p in params]
    moon = build("agent_plugin", "moon", mu=0.7, tau=0.3, layer=layer)
    population = AgentPopulation(Partition.from_shards([np.arange(6)]), moon.state_fields())
    population.set("moon_previous", 0, torch.cat([p.reshape(-1) for p in previous]))
    agent = AgentContext(0, 1, Instruction(0, 1), params, global_params, 0.1, 6, AgentState(population, 0), model=model)
    moon.on_agent_start(agent)
    x = torch.randn(6, 5)
    model(x)
    term = moon.loss_term(agent, params, global_params)
    z, z_global, z_previous = (hidden_of(x, w, torch.tanh) for w in (params, global_params, previous))
    expected = moon_term(z, z_global, z_previous, 0.7, 0.3)
    torch.testing.assert_close(term, expected)
    body = params[:2]  # the head does not shape the representation
    for got, want in zip(torch.autograd.grad(term, body, retain_graph=True), torch.autograd.grad(expected, body)):
        torch.testing.assert_close(got, want)
    moon.on_update(agent, AgentResult(0, torch.full((sum(p.numel() for p in params),), 0.5), 6))
    model(x)  # its hooks are gone: nothing captured
    assert moon._captured == {}
    stored = agent.state.written["moon_previous"]
    torch.testing.assert_close(stored, torch.cat([g.reshape(-1) for g in global_params]) + 0.5)


def moon_config(agents: int = 3, rounds: int = 2) -> dict:
    config = full_batch_config("fedavg", agents=agents, rounds=rounds)
    config["model"] = {"name": "mlp", "hidden": [8]}
    config["federation"]["agent_plugins"] = [{"name": "moon", "mu": 1.0, "tau": 0.5}]
    return config


def test_moon_over_two_rounds_keeps_each_agents_previous_model(tmp_path):
    """Round 1: no previous model, plain local training; round 2: the contrastive term against the
    global model and the agent's round-1 model, kept in its state."""
    mu, tau = 1.0, 0.5
    experiment, shards, model = setting(moon_config())
    result = experiment.run(out_dir=tmp_path, progress=False)

    theta = [p.detach().clone() for p in model.parameters()]
    previous: list[list[torch.Tensor] | None] = [None] * len(shards)
    for _ in range(2):
        deltas, sizes = [], []
        for k, (x, y) in enumerate(shards):
            w = [t.clone().requires_grad_() for t in theta]
            optimizer = torch.optim.SGD(w, lr=LR)
            for _ in range(2):
                z = hidden_of(x, w)
                loss = F.cross_entropy(z @ w[2].T + w[3], y)
                if previous[k] is not None:
                    loss = loss + moon_term(z, hidden_of(x, theta), hidden_of(x, previous[k]), mu, tau)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            previous[k] = [p.detach().clone() for p in w]
            deltas.append([p.detach() - t for p, t in zip(w, theta)])
            sizes.append(len(y))
        theta = [t + sum(n * d[i] for n, d in zip(sizes, deltas)) / sum(sizes) for i, t in enumerate(theta)]

    for (name, _), value in zip(model.named_parameters(), theta):
        torch.testing.assert_close(result.state_dict[name], value, rtol=1e-5, atol=1e-6)
    stored = read_checkpoint(result.run_dir)["sparse"]["moon_previous"]
    for k in range(len(shards)):
        torch.testing.assert_close(stored[k], torch.cat([p.reshape(-1) for p in previous[k]]), rtol=1e-5, atol=1e-6)


def test_a_resumed_moon_run_equals_a_straight_one(tmp_path):
    config = moon_config(agents=6, rounds=5)
    config["federation"]["sampler"] = {"name": "uniform", "count": 2}
    config = validate_config(config)
    straight_and_resumed(config, tmp_path)
