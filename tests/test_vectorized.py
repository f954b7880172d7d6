"""The vectorized backend trains what the sequential one does, the same way: BatchNorm, dropout,
every built-in optimizer and schedule, gradient clipping, chunks of any size; and names what it
cannot train."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from flcore_plugins.backends.vectorized.functional import FunctionalModel
from flcore_plugins.backends.vectorized.memory import chunk_capacity
from flcore_plugins.backends.vectorized.optimizers import OPTIMIZERS, clip_per_agent
from lightning.fabric.plugins import Precision
from torch import nn

from flcore import hookimpl, seeding
from flcore.config import validate_config
from flcore.errors import ConfigError
from flcore.experiment import Experiment
from flcore.models import ClassifierModule
from flcore.params import NoParams
from flcore.training import build_optimizer

STRICT = {"name": "vectorized", "strict": True}


# ------------------------------------------------------------------------------------ test models
def bn_cnn(params: NoParams, spec) -> ClassifierModule:
    """BatchNorm after a convolution and after a dense layer, channel dropout between. No bias
    before a BatchNorm: its gradient is exactly zero in theory, so rounding noise, which Adam's
    normalized step would turn into full steps of random sign on either backend."""
    return ClassifierModule(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.25), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16, bias=False), nn.BatchNorm1d(16, momentum=None), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(16, spec.num_classes)))


def bn_mlp(params: NoParams, spec) -> ClassifierModule:
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                                          nn.Linear(16, spec.num_classes)))


def alpha_dropout_mlp(params: NoParams, spec) -> ClassifierModule:
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.AlphaDropout(0.2),
                                          nn.Linear(16, spec.num_classes)))


class _Noise(nn.Module):
    def forward(self, x):
        return x + 0.01 * torch.randn_like(x)


def noisy_mlp(params: NoParams, spec) -> ClassifierModule:
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), _Noise(), nn.Linear(16, spec.num_classes)))


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x


def counting_mlp(params: NoParams, spec) -> ClassifierModule:
    return ClassifierModule(nn.Sequential(nn.Flatten(), _Counter(), nn.Linear(64, spec.num_classes)))


def shared_bn_mlp(params: NoParams, spec) -> ClassifierModule:
    norm = nn.BatchNorm1d(16)
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), norm, nn.Linear(16, 16), norm,
                                          nn.Linear(16, spec.num_classes)))


class Models:
    @staticmethod
    @hookimpl
    def register_models(register):
        for model in (bn_cnn, bn_mlp, alpha_dropout_mlp, noisy_mlp, counting_mlp, shared_bn_mlp):
            register(model.__name__, model, "Test model.")


def run(tmp_path, config, backend, name, **kwargs):
    config = {**config, "federation": {**config["federation"], "backend": backend}}
    return Experiment(validate_config(config), plugins=[("test", Models)]).run(out_dir=tmp_path / name, **kwargs)


def assert_same_model(a, b, rtol=1e-4, atol=1e-5):
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, value in a.state_dict.items():
        if value.is_floating_point():
            torch.testing.assert_close(b.state_dict[name], value, rtol=rtol, atol=atol,
                                       msg=lambda text, name=name: f"{name}: {text}")
        else:
            assert torch.equal(b.state_dict[name], value), name


@pytest.fixture
def ragged(tiny_config):
    """Shards of different sizes, two epochs, a last batch shorter than the others."""
    tiny_config["federation"].update(partitioner={"name": "quantity_skew", "sigma": 0.5}, rounds=2)
    tiny_config["training"] = {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1}}
    return tiny_config


# ------------------------------------------------------------------------------------ optimizers
OPTIMIZER_CONFIGS = [
    {"name": "sgd", "lr": 0.1},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
    {"name": "sgd", "lr": 0.05, "momentum": 0.5, "nesterov": True},
    {"name": "adam", "lr": 0.01, "weight_decay": 1e-2},
    {"name": "adamw", "lr": 0.01, "weight_decay": 1e-1, "betas": [0.8, 0.99]},
    {"name": "rmsprop", "lr": 0.01},
    {"name": "rmsprop", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-2},
    {"name": "adagrad", "lr": 0.1},
    {"name": "adagrad", "lr": 0.1, "weight_decay": 1e-2},
]


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_stacked_optimizers_apply_torch_optims_update_per_agent(config):
    """Three agents, five steps, each stepping only where active: each agent's parameters and the
    torch.optim optimizer of that agent alone, stepped on its active steps, agree."""
    from flcore.config import OptimizerConfig

    opt = OptimizerConfig(**config)
    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 5, generator=g)}
    grads = [{n: torch.randn(p.shape, generator=g) for n, p in start.items()} for _ in range(5)]
    active = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    lr = torch.tensor([opt.lr, opt.lr * 0.5, opt.lr * 2], dtype=torch.float64)
    stacked = {n: p.clone() for n, p in start.items()}
    optimizer = OPTIMIZERS[opt.name](stacked, opt, 3, torch.device("cpu"))
    for step, grad in enumerate(grads):
        optimizer.step(stacked, {n: v.clone() for n, v in grad.items()}, active[step], lr)
    for agent in range(3):
        params = [nn.Parameter(start[n][agent].clone()) for n in start]
        reference = build_optimizer(opt, params)
        for group in reference.param_groups:
            group["lr"] = float(lr[agent])
        for step, grad in enumerate(grads):
            if active[step, agent]:
                for p, n in zip(params, start):
                    p.grad = grad[n][agent].clone()
                reference.step()
        for p, n in zip(params, start):
            torch.testing.assert_close(stacked[n][agent], p.detach(), rtol=1e-6, atol=1e-7)


def test_per_agent_clipping_is_clip_grad_norm_of_each_agent():
    g = torch.Generator().manual_seed(1)
    grads = {"w": torch.randn(3, 6, 2, generator=g) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1),
             "b": torch.randn(3, 2, generator=g)}
    grads["b"][2, 0] = float("inf")
    expected = []
    for agent in range(3):
        tensors = [nn.Parameter(torch.zeros_like(v[agent])) for v in grads.values()]
        for t, v in zip(tensors, grads.values()):
            t.grad = v[agent].clone()
        torch.nn.utils.clip_grad_norm_(tensors, max_norm=0.5)
        expected.append([t.grad for t in tensors])
    flags = clip_per_agent(grads, 0.5)
    assert flags.tolist() == [False, False, True]
    for agent in range(2):  # the non-finite agent fails on both backends; its values do not matter
        for value, reference in zip(grads.values(), expected[agent]):
            torch.testing.assert_close(value[agent], reference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS[5:], ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_vectorized_equals_sequential_with_rmsprop_and_adagrad(tmp_path, ragged, config):
    """At a tenth of the unit test's learning rates: both optimizers divide by the root of the
    squared gradients, so a weight whose gradient is rounding noise (a near-constant pixel) takes a
    full step of that noise's sign on either backend; lr bounds how far the two can drift apart."""
    ragged["training"]["optimizer"] = {**config, "lr": config["lr"] / 10}
    assert_same_model(run(tmp_path, ragged, "sequential", "s"), run(tmp_path, ragged, STRICT, "v"))


@pytest.mark.parametrize("scheduler", [{"name": "step", "step_size": 1, "gamma": 0.5},
                                       {"name": "cosine", "min_factor": 0.1}])
def test_vectorized_follows_the_learning_rate_schedule(tmp_path, ragged, scheduler):
    ragged["federation"]["rounds"] = 3
    ragged["training"]["scheduler"] = scheduler
    sequential, vectorized = run(tmp_path, ragged, "sequential", "s"), run(tmp_path, ragged, STRICT, "v")
    assert_same_model(sequential, vectorized)
    assert [r["lr"] for r in vectorized.history] == [r["lr"] for r in sequential.history]
    assert len({r["lr"] for r in vectorized.history}) == 3


def test_vectorized_clips_each_agents_gradients_like_sequential(tmp_path, ragged):
    ragged["training"]["grad_clip_norm"] = 0.3
    clipped = run(tmp_path, ragged, "sequential", "s")
    assert_same_model(clipped, run(tmp_path, ragged, STRICT, "v"))
    ragged["training"]["grad_clip_norm"] = None
    unclipped = run(tmp_path, ragged, "sequential", "u")
    assert any(not torch.allclose(unclipped.state_dict[k], v) for k, v in clipped.state_dict.items())


# ------------------------------------------------------------------------------------ dropout, BatchNorm
def test_dropout_masks_are_the_ones_torch_draws_after_seeding_its_global_generator():
    """The masks of two dropout layers for one agent's two steps (batches of 5 and 3) equal
    F.dropout's noise after ``seed_torch`` with the agent's key, bit for bit."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 12), nn.Unflatten(1, (3, 2, 2)),
                          nn.Dropout2d(0.5), nn.Flatten())
    functional = FunctionalModel(model, torch.randn(3, 6), Precision())
    assert [(c.name, c.shape) for c in functional.calls] == [("1", (8,)), ("4", (3, 1, 1))]
    key = (7, seeding.TRAINING, 2, 5)
    generator = torch.Generator().manual_seed(seeding.derive_seed(*key))
    seeding.seed_torch(*key)
    for count in (5, 3):
        first, second = functional.draw_noise([generator, None], [count, 4], 6, torch.device("cpu"))
        assert torch.equal(first[0, :count], F.dropout(torch.ones(count, 8), 0.3, True))
        assert torch.equal(second[0, :count], F.dropout2d(torch.ones(count, 3, 1, 1), 0.5, True))
        assert not first[0, count:].any() and not first[1].any()  # padding, and an agent that does not step


def test_vectorized_dropout_mlp_equals_sequential(tmp_path, ragged):
    ragged["model"] = {"name": "mlp", "hidden": [32, 16], "dropout": 0.3}
    sequential = run(tmp_path, ragged, "sequential", "s")
    assert_same_model(sequential, run(tmp_path, ragged, STRICT, "v"))
    ragged["model"]["dropout"] = 0.0
    assert any(not torch.allclose(run(tmp_path, ragged, "sequential", "n").state_dict[k], v)
               for k, v in sequential.state_dict.items())


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [16], "dropout": 0.2}, "bn_cnn"],
                         ids=["dropout_mlp", "bn_cnn"])
def test_vectorized_in_float64_equals_sequential(tmp_path, ragged, model):
    """64-true: the inputs follow the Fabric's precision, the masks are drawn in float64 as torch's
    dropout draws them for a float64 activation, BatchNorm keeps float64 statistics."""
    ragged["model"] = model
    ragged["runtime"] = {"precision": "64-true"}
    sequential, vectorized = run(tmp_path, ragged, "sequential", "s"), run(tmp_path, ragged, STRICT, "v")
    assert all(v.dtype == torch.float64 for v in vectorized.state_dict.values() if v.is_floating_point())
    assert_same_model(sequential, vectorized, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adam", "lr": 0.01}])
def test_vectorized_batch_norm_cnn_equals_sequential_buffers_included(tmp_path, ragged, optimizer):
    """Running statistics (momentum 0.1 and cumulative), their counters and the weights agree;
    the buffers are each agent's, averaged by the engine."""
    ragged["model"] = "bn_cnn"
    ragged["training"]["optimizer"] = optimizer
    sequential, vectorized = run(tmp_path, ragged, "sequential", "s"), run(tmp_path, ragged, STRICT, "v")
    assert_same_model(sequential, vectorized)
    assert not torch.allclose(vectorized.state_dict["net.1.running_var"], torch.ones(4))  # trained statistics
    assert int(vectorized.state_dict["net.6.num_batches_tracked"]) > 0


def test_batch_norm_with_one_sample_fails_that_agent_on_both_backends(tmp_path, tiny_config):
    """With 179 samples per batch, the agents holding 180 end an epoch on a batch of one, which
    BatchNorm1d refuses in training; the others train, identically on both backends."""
    tiny_config["model"] = "bn_mlp"
    tiny_config["federation"].update(rounds=1, sampler="all", on_agent_failure="skip")
    tiny_config["training"]["batch_size"] = 179
    with pytest.warns(UserWarning) as sequential_warnings:
        sequential = run(tmp_path, tiny_config, "sequential", "s")
    with pytest.warns(UserWarning) as vectorized_warnings:
        vectorized = run(tmp_path, tiny_config, STRICT, "v")
    skipped = [str(w.message) for w in vectorized_warnings if "skipping update" in str(w.message)]
    assert skipped == [f"skipping update: agent {a} failed in round 1: a BatchNorm layer got one value per channel "
                       "in training (a batch of one sample), as torch refuses" for a in range(6)]
    assert [m.split(":")[1] for m in skipped] == [str(w.message).split(":")[1] for w in sequential_warnings
                                                  if "skipping update" in str(w.message)]
    assert sequential.history[0]["skipped"] == vectorized.history[0]["skipped"] == 6
    assert_same_model(sequential, vectorized)


def test_vectorized_batch_norm_and_dropout_resume_bit_identically(tmp_path, ragged):
    ragged["model"] = "bn_cnn"
    ragged["federation"]["rounds"] = 3
    straight = run(tmp_path, ragged, STRICT, "a")
    stopped = run(tmp_path, ragged, STRICT, "b", stop_after_rounds=1)
    config = {**ragged, "federation": {**ragged["federation"], "backend": STRICT}}
    resumed = Experiment(validate_config(config), plugins=[("test", Models)]).run(resume_dir=stopped.run_dir)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name


def test_vectorized_bf16_autocast_is_close_to_sequential_bf16(tmp_path, ragged):
    """bf16-mixed runs the forward pass under autocast on both backends: the vectorized model is
    near the sequential one at bf16's resolution, and differs from its own fp32 run."""
    ragged["runtime"] = {"precision": "bf16-mixed"}
    sequential, vectorized = run(tmp_path, ragged, "sequential", "s"), run(tmp_path, ragged, STRICT, "v")
    assert_same_model(sequential, vectorized, rtol=0.05, atol=0.02)
    ragged["runtime"] = {"precision": "32-true"}
    full = run(tmp_path, ragged, STRICT, "f")
    assert any(not torch.allclose(full.state_dict[k], v, atol=1e-4) for k, v in vectorized.state_dict.items())


# ------------------------------------------------------------------------------------ chunks
def test_chunks_give_the_model_of_one_chunk_and_are_logged(tmp_path, ragged):
    ragged["model"] = "bn_cnn"
    ragged["federation"]["sampler"] = {"name": "uniform", "count": 5}
    whole = run(tmp_path, ragged, STRICT, "one")
    with pytest.warns(UserWarning, match="vectorized: 5 agents train in chunks of up to 2"):
        chunked = run(tmp_path, ragged, {**STRICT, "chunk_size": 2}, "chunks")
    assert_same_model(whole, chunked)  # not bit-identical: k agents' convolutions run as one grouped conv
    assert [(r["vectorized/chunk_size"], r["vectorized/chunks"]) for r in chunked.history] == [(2, 3), (2, 3)]
    assert all(r["vectorized/chunks"] == 1 for r in whole.history)


def test_a_memory_budget_below_one_agent_trains_one_agent_at_a_time(tmp_path, ragged):
    with pytest.warns(UserWarning, match=r"chunks of up to 1 \(one agent's step takes [0-9.]+ MiB and the budget "
                                         r"is 0 MiB"):
        tight = run(tmp_path, ragged, {**STRICT, "memory_budget_mib": 1e-3}, "tight")
    assert all(r["vectorized/chunk_size"] == 1 and r["vectorized/chunks"] == 4 for r in tight.history)
    assert_same_model(run(tmp_path, ragged, STRICT, "whole"), tight, rtol=1e-6, atol=1e-7)


def test_measured_agent_memory_grows_with_the_batch_and_covers_its_state(tmp_path, tiny_config):
    """On a CPU: what autograd saves for one agent's step grows by at least a conv output per
    sample, and the total holds at least the agent's parameters and gradients."""
    from flcore.engine.federated import FederatedRun
    from flcore.engine.rundir import RunDirectory
    from flcore.engine.weights import flatten

    tiny_config["model"] = "bn_cnn"
    tiny_config["federation"]["backend"] = STRICT
    experiment = Experiment(validate_config(tiny_config), plugins=[("test", Models)])
    backend = experiment.components["backend"].build()
    fabric = backend.launch(experiment.config.runtime)
    built = FederatedRun(experiment.config, experiment.components, RunDirectory.create(tmp_path, "m"), backend, fabric)
    vector = flatten([p for p in built.model.parameters() if p.requires_grad])
    small, large = built.backend.lockstep.agent_bytes(vector, 8), built.backend.lockstep.agent_bytes(vector, 64)
    conv_output = 4 * 8 * 8 * 4  # bytes per sample of the first convolution's float32 output
    assert large - small >= (64 - 8) * conv_output
    assert small > 2 * vector.numel() * 4


def test_chunk_capacity_divides_the_budget_by_one_agent():
    assert chunk_capacity(10 * 2**20, 3 * 2**20) == 3
    assert chunk_capacity(2**20, 3 * 2**20) == 1
    assert chunk_capacity(float("inf"), 1) >= 2**31


# ------------------------------------------------------------------------------------ what stays refused
@pytest.mark.parametrize("model,blocker", [
    ("alpha_dropout_mlp", "the model's AlphaDropout layer 'net.2'"),
    ("noisy_mlp", r"the model cannot run under torch.func.vmap \(vmap: called random operation"),
    ("counting_mlp", "the model's forward pass changes its buffer 'net.1.calls'"),
    ("shared_bn_mlp", "the model uses its BatchNorm1d layer 'net.4' in more than one place"),
])
def test_what_cannot_be_vectorized_falls_back_with_its_name_or_exits_2_when_strict(tmp_path, tiny_config, model,
                                                                                  blocker):
    tiny_config["model"] = model
    tiny_config["federation"]["rounds"] = 1
    with pytest.warns(UserWarning, match=f"backend 'vectorized'.*{blocker}.*falling back to SequentialBackend"):
        fallback = run(tmp_path, tiny_config, "vectorized", "v")
    assert "vectorized/chunk_size" not in fallback.history[0]  # the sequential backend trained it
    with pytest.raises(ConfigError, match=f"cannot train this experiment: {blocker}"):
        run(tmp_path, tiny_config, STRICT, "strict")
    assert not (tmp_path / "strict").exists() or not list((tmp_path / "strict").iterdir())


def test_strict_refusal_exits_2_from_the_cli(tmp_path, tiny_config):
    """SCAFFOLD's agent-side plugin edits gradients in before_step: it is not vectorizable."""
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    tiny_config["federation"].update(aggregator="scaffold", backend=STRICT)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "cannot train this experiment: agent-side plugin 'scaffold_correction'" in result.output
    assert "Traceback" not in result.output
