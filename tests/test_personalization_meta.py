"""The meta-learning and proximal personalization methods (Per-FedAvg, pFedMe) against references of their update rules
written here in plain PyTorch (torch.autograd.functional for the Hessian-vector product), over two
rounds, with a resume and their bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_personalization import (
    accuracy,
    assert_model,
    assert_row,
    config_for,
    experiment_of,
    fedavg,
    setting,
    sgd,
    validate_exit,
)
from torch.func import functional_call

from flcore import seeding
from flcore.engine.state_store import read_checkpoint
from flcore.errors import ConfigError
from flcore.testing import tiny_config

LR = 0.1  # config_for's SGD rate: Per-FedAvg's outer step beta


def parts(n: int, count: int) -> list[slice]:
    """Contiguous, near-equal parts of a batch (numpy.array_split's sizes)."""
    sizes = [n // count + (1 if i < n % count else 0) for i in range(count)]
    bounds = [sum(sizes[:i]) for i in range(count + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(count)]


def perfedavg_step(model, x, y, alpha: float, variant: str) -> None:
    """One Per-FedAvg step of ``model`` on the batch (x, y), as Algorithm 1 of Fallah et al. 2020
    writes it: w~ = w - alpha grad f(w; D); w <- w - beta [I - alpha H(w; D'')] grad f(w~; D')."""
    d, d1, *rest = parts(len(x), 3 if variant == "hf" else 2)
    names = [n for n, _ in model.named_parameters()]
    w = tuple(p.detach().clone() for p in model.parameters())

    def f(values, part):
        return F.cross_entropy(functional_call(model, dict(zip(names, values)), (x[part],)), y[part])

    inner = torch.autograd.grad(f(tuple(v.requires_grad_() for v in w), d), w)
    adapted = tuple((v - alpha * g).detach().requires_grad_() for v, g in zip(w, inner))
    direction = torch.autograd.grad(f(adapted, d1), adapted)
    if variant == "hf":
        _, hv = torch.autograd.functional.hvp(lambda *values: f(values, rest[0]), tuple(v.detach() for v in w),
                                              direction)
        direction = tuple(g - alpha * h for g, h in zip(direction, hv))
    with torch.no_grad():
        for p, g in zip(model.parameters(), direction):
            p.sub_(LR * g)


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_perfedavg_follows_its_update_rule_and_adapts_one_step_before_scoring(tmp_path, variant):
    """Two rounds, every agent, two full-batch local steps each (the batch in the engine's seeded
    order, which decides the parts D, D', D''), FedAvg of the local models; each agent is scored
    after one SGD step at alpha from the global model on its training shard."""
    alpha = 0.3
    config = config_for([{"name": "perfedavg", "alpha": alpha, "variant": variant}], model={"name": "mlp", "hidden": [8]})
    experiment, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    seed = experiment.config.seed
    for r in range(2):
        locals_ = []
        for k, (x, y) in enumerate(train):
            local = copy.deepcopy(model)
            order = seeding.torch_generator(seed, seeding.TRAINING, r, k, 1)
            for _ in range(2):  # epochs, one full batch each
                perm = torch.randperm(len(y), generator=order)
                perfedavg_step(local, x[perm], y[perm], alpha, variant)
            locals_.append(local)
        fedavg(model, locals_, [len(y) for _, y in train])
        accs = []
        for (x, y), (hx, hy) in zip(train, held):
            adapted = copy.deepcopy(model)
            sgd(adapted, list(adapted.parameters()), x, y, steps=1, lr=alpha)
            accs.append(accuracy(adapted, hx, hy))
        assert_row(result.history[r], accs, held)
    assert_model(result, model)


def test_pfedme_follows_its_update_rule_and_scores_each_agents_personal_model(tmp_path):
    """Two rounds, every agent, two full-batch local steps: K proximal steps on theta (from the
    global model, carried over), then w <- w - eta lam (w - theta); the server mixes with beta
    (FedAvg's server_lr); each agent is scored with its last theta, which the checkpoint holds."""
    lam, inner, personal_lr, beta = 2.0, 3, 0.05, 1.5
    config = config_for([{"name": "pfedme", "lam": lam, "inner_steps": inner, "personal_lr": personal_lr}],
                        model={"name": "mlp", "hidden": [8]})
    config["federation"]["aggregator"] = {"name": "fedavg", "server_lr": beta}
    _, train, held, model = setting(config)
    result = experiment_of(config).run(out_dir=tmp_path, progress=False)
    personal = [None] * len(train)
    for r in range(2):
        locals_ = []
        for k, (x, y) in enumerate(train):
            w = copy.deepcopy(model)
            theta = copy.deepcopy(model)
            for _ in range(2):  # two local steps, each on the full batch
                anchor = [p.detach().clone() for p in w.parameters()]
                sgd(theta, list(theta.parameters()), x, y, steps=inner, lr=personal_lr,
                    extra=lambda theta=theta, anchor=anchor: lam / 2 * sum(
                        ((t - a) ** 2).sum() for t, a in zip(theta.parameters(), anchor)))
                with torch.no_grad():
                    for p, t in zip(w.parameters(), theta.parameters()):
                        p.sub_(LR * lam * (p - t))
            locals_.append(w)
            personal[k] = theta
        mean = copy.deepcopy(model)
        fedavg(mean, locals_, [len(y) for _, y in train])
        with torch.no_grad():
            for p, m in zip(model.parameters(), mean.parameters()):
                p.copy_((1 - beta) * p + beta * m)
        assert_row(result.history[r], [accuracy(t, hx, hy) for t, (hx, hy) in zip(personal, held)], held)
    assert_model(result, model)
    stored = read_checkpoint(result.run_dir)["sparse"]["pfedme_personal"]
    for k, theta in enumerate(personal):
        torch.testing.assert_close(stored[k], torch.cat([p.detach().reshape(-1) for p in theta.parameters()]),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("plugin", "batch_size", "expected"),
    [
        ({"name": "perfedavg", "alpha": 0}, 32, "'federation.agent_plugins[0].alpha' = 0"),
        ({"name": "perfedavg", "variant": "so"}, 32, "'federation.agent_plugins[0].variant' = 'so'"),
        ({"name": "perfedavg", "adapt_steps": 0}, 32, "'federation.agent_plugins[0].adapt_steps' = 0"),
        ({"name": "perfedavg", "variant": "hf"}, 2,
         "training.batch_size = 2 is too small for perfedavg (variant 'hf'): each step splits its batch into "
         "D, D' and D''; expected at least 3"),
        ({"name": "pfedme", "lam": 0}, 32, "'federation.agent_plugins[0].lam' = 0"),
        ({"name": "pfedme", "inner_steps": 0}, 32, "'federation.agent_plugins[0].inner_steps' = 0"),
        ({"name": "pfedme", "lam": 15, "personal_lr": 0.2}, 32,
         "'personal_lr' x 'lam' = 0.2 x 15.0 = 3: the inner steps on theta then overshoot"),
        ([{"name": "dp_sgd", "noise_multiplier": 1.0, "clip_norm": 1.0}, {"name": "pfedme"}], 32,
         "dp_sgd, pfedme each implement compute_gradients; at most one of them may be listed"),
    ],
)
def test_bad_input_exits_2_naming_the_field(tmp_path, plugin, batch_size, expected):
    config = tiny_config(agent_plugins=plugin if isinstance(plugin, list) else [plugin])
    config["training"]["batch_size"] = batch_size
    assert expected in validate_exit(tmp_path, config)


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [({"name": "perfedavg"}, "it computes each step's gradient at a second point"),
     ({"name": "pfedme"}, "it trains a second, personal model inside each step")],
)
def test_strict_vectorized_refuses_saying_why(tmp_path, plugin, reason):
    config = tiny_config(agent_plugins=[plugin], backend={"name": "vectorized", "strict": True})
    name = plugin["name"]
    with pytest.raises(ConfigError, match=f"agent-side plugin '{name}' does not declare vectorizable \\({reason}"):
        experiment_of(config).run(out_dir=tmp_path, progress=False)
