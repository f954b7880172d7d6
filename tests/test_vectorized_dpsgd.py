"""DP-SGD on the vectorized backend: per-agent, per-sample gradients under a nested vmap, each
agent's Poisson batches padded and masked, its own noise, its own expected batch size."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flcore.agents import AgentPopulation
from flcore.config import validate_config
from flcore.experiment import Experiment
from flcore.partition import Partition
from flcore.protocol import RunPlan
from flcore.testing import build, tiny_config

VECTORIZED = {"name": "vectorized", "strict": True}


def ragged(noise: float, batch_size: int = 16, plugins: tuple = (), **federation) -> dict:
    """Shards of different sizes (so Poisson rates and step counts differ per agent), two rounds of
    two epochs: with small batches some Poisson batches are empty."""
    config = tiny_config(rounds=2, agent_plugins=[*plugins, {"name": "dp_sgd", "noise_multiplier": noise,
                                                              "delta": 1e-4}], **federation)
    config["federation"].update(partitioner={"name": "quantity_skew", "sigma": 0.5})
    config["training"] = {"epochs": 2, "batch_size": batch_size, "optimizer": {"name": "sgd", "lr": 0.1}}
    return config


def run(tmp_path, config, backend, name, **kwargs):
    config = {**config, "federation": {**config["federation"], "backend": backend}}
    return Experiment(validate_config(config)).run(out_dir=tmp_path / name, progress=False, **kwargs)


def assert_same_model(a, b, atol=1e-5):
    for name, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], value, rtol=0, atol=atol, msg=lambda t, n=name: f"{n}: {t}")


@pytest.mark.parametrize("noise,batch_size,plugins,dropout", [
    (0.0, 16, (), 0.0),
    (0.0, 3, ({"name": "proximal", "mu": 0.5},), 0.0),  # many empty batches; FedProx's term added after DP-SGD's
    (1.3, 16, (), 0.0),
    (1.3, 16, (), 0.3),
], ids=["clean", "empty-batches-and-proximal", "noised", "noised-dropout"])
def test_vectorized_dp_sgd_equals_sequential(tmp_path, noise, batch_size, plugins, dropout):
    """Two rounds on unequal shards: the same Poisson batches (each agent's batch-order generator)
    and, with noise, the same noise (each agent's stream, seeded as sequential seeds torch's global
    generator; on a CPU each sample's dropout mask and then the noise come from it in the sequential
    order), so the models agree to float rounding and the epsilons (from the steps each agent ran,
    empty batches included) are equal."""
    config = ragged(noise, batch_size, plugins)
    config["model"] = {"name": "mlp", "hidden": [32], "dropout": dropout}
    sequential = run(tmp_path, config, "sequential", "s")
    vectorized = run(tmp_path, config, VECTORIZED, "v")
    assert_same_model(sequential, vectorized)
    steps = [r["dp_sgd/epsilon"] for r in sequential.history]
    assert [r["dp_sgd/epsilon"] for r in vectorized.history] == steps
    assert all(r["vectorized/chunks"] == 1 for r in vectorized.history)  # it ran vectorized, no fallback


def test_vectorized_dp_sgd_resumes_exactly(tmp_path):
    config = ragged(0.8)
    config["federation"]["rounds"] = 4
    straight = run(tmp_path, config, VECTORIZED, "a")
    stopped = run(tmp_path, config, VECTORIZED, "b", stop_after_rounds=2)
    resumed = Experiment(validate_config({**config, "federation": {**config["federation"], "backend": VECTORIZED}})
                         ).run(resume_dir=stopped.run_dir, progress=False)
    for name, value in straight.state_dict.items():
        assert torch.equal(resumed.state_dict[name], value), name
    assert [r["dp_sgd/epsilon"] for r in resumed.history] == [r["dp_sgd/epsilon"] for r in straight.history]


# ------------------------------------------------------------------------------ the gradient transform
def planned(plugin, sizes, batch_size):
    training = SimpleNamespace(batch_size=batch_size, epochs=1, max_steps=None)
    plugin.check_run(RunPlan(len(sizes), 1, None, None, training=training))
    plugin.setup(AgentPopulation(Partition.from_shards([np.arange(s) for s in sizes]), plugin.state_fields()),
                 np.random.default_rng(0))


def stacked_case(k=3, b=7, seed=0):
    """Per-sample gradients of two parameters for ``k`` agents, norms from 0.1 to 10, and weights
    masking a different number of real samples per agent (agent 1's batch is empty)."""
    g = torch.Generator().manual_seed(seed)
    grads = {"w": torch.randn(k, b, 5, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(k, b, 4, generator=g, dtype=torch.float64)}
    scale = torch.logspace(-1, 1, b, dtype=torch.float64)[torch.randperm(b, generator=g)] / 4.6
    grads = {n: t * scale.view(1, b, *[1] * (t.dim() - 2)) for n, t in grads.items()}
    counts = [5, 0, 7][:k] + [3] * max(0, k - 3)
    weight = torch.zeros(k, b, dtype=torch.float64)
    for i, c in enumerate(counts):
        weight[i, :c] = 1
    return grads, weight, counts


def test_the_stacked_gradients_are_each_agents_clipped_sum_over_its_expected_batch():
    """z = 0: agent i's result is a loop over its real samples (each flattened gradient clipped to C,
    summed) over min(batch_size, n_i); padding and the empty batch contribute nothing."""
    plugin = build("agent_plugin", "dp_sgd", clip_norm=0.7, noise_multiplier=0.0, delta=1e-4)
    sizes = [40, 30, 5]
    planned(plugin, sizes, batch_size=8)
    grads, weight, counts = stacked_case()
    agents = [SimpleNamespace(num_samples=n) for n in sizes]
    out = plugin.vectorized_gradients(agents, grads, weight, [torch.Generator() for _ in sizes])
    for i, (n, count) in enumerate(zip(sizes, counts)):
        total = torch.zeros(24, dtype=torch.float64)
        for j in range(count):
            flat = torch.cat([grads["w"][i, j].reshape(-1), grads["b"][i, j]])
            total += flat * min(1.0, 0.7 / float(flat.norm()))
        ours = torch.cat([out["w"][i].reshape(-1), out["b"][i]])
        torch.testing.assert_close(ours, total / min(8, n), rtol=1e-12, atol=1e-12)


def test_each_agents_noise_has_std_z_c_over_its_expected_batch_and_is_the_sequential_draw():
    """z = 1.5, C = 0.7, expected batches 8, 8 and 5: each agent's noise over 6,000 coordinates has
    standard deviation z C / min(8, n) within 4 standard errors (about 4.6 %; a missing division, C
    or a shared denominator is off by 37 % or more), and equals what the sequential
    compute_gradients draws after torch's global generator is seeded with that agent's seed."""
    z, clip, sizes = 1.5, 0.7, [40, 30, 5]
    clean = build("agent_plugin", "dp_sgd", clip_norm=clip, noise_multiplier=0.0, delta=1e-4)
    noisy = build("agent_plugin", "dp_sgd", clip_norm=clip, noise_multiplier=z, delta=1e-4)
    for plugin in (clean, noisy):
        planned(plugin, sizes, batch_size=8)
    grads = {"w": torch.zeros(3, 2, 60, 50), "b": torch.zeros(3, 2, 3000)}
    grads["w"][:, 0] = 0.01
    weight = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    agents = [SimpleNamespace(num_samples=n) for n in sizes]
    seeds = [11, 12, 13]
    without = clean.vectorized_gradients(agents, grads, weight, [torch.Generator().manual_seed(s) for s in seeds])
    noised = noisy.vectorized_gradients(agents, grads, weight, [torch.Generator().manual_seed(s) for s in seeds])
    for i, (n, seed) in enumerate(zip(sizes, seeds)):
        noise = torch.cat([(noised[p][i] - without[p][i]).reshape(-1) for p in ("w", "b")]).double()
        sigma = z * clip / min(8, n)
        assert abs(float(noise.std()) - sigma) < 4 * sigma / math.sqrt(2 * noise.numel())
        assert abs(float(noise.mean())) < 4 * sigma / math.sqrt(noise.numel())
        torch.manual_seed(seed)  # the sequential path: parameter by parameter from the global generator
        reference = torch.cat([torch.randn(60, 50).reshape(-1), torch.randn(3000)]) * (z * clip) / min(8, n)
        torch.testing.assert_close(noise.float(), reference, rtol=0, atol=1e-6)
    skipped = noisy.vectorized_gradients(agents, grads, weight, [None, None, None])  # not stepping: no draws
    torch.testing.assert_close(skipped["b"], without["b"])


# ------------------------------------------------------------------------------ memory
def built_run(tmp_path, config):
    from flcore.engine.federated import FederatedRun
    from flcore.engine.rundir import RunDirectory

    experiment = Experiment(validate_config(config))
    backend = experiment.components["backend"].build()
    fabric = backend.launch(experiment.config.runtime)
    return FederatedRun(experiment.config, experiment.components, RunDirectory.create(tmp_path, "m"), backend, fabric)


def test_one_agents_measured_memory_counts_a_batch_of_per_sample_gradients(tmp_path):
    """On a CPU: with dp_sgd, one agent's step takes at least batch x the trainable parameters'
    bytes more than the same step without it (the per-sample gradients), and the chunk's capacity is
    probed at a batch wide enough for a Poisson draw."""
    from flcore.engine.weights import flatten

    plain = built_run(tmp_path / "p", tiny_config(backend=VECTORIZED))
    private = built_run(tmp_path / "d", tiny_config(backend=VECTORIZED, agent_plugins=["dp_sgd"]))
    vector = flatten([p for p in plain.model.parameters() if p.requires_grad])
    for batch in (8, 64):
        grows = private.backend.lockstep.agent_bytes(vector, batch) - plain.backend.lockstep.agent_bytes(vector, batch)
        assert grows >= batch * vector.numel() * 4
    assert private.backend.agent_mib > plain.backend.agent_mib + 32 * vector.numel() * 4 / 2**20


def test_the_probe_step_cuda_measures_is_one_dp_sgd_step(tmp_path):
    """The one-agent step whose peak CUDA measures, run here on a CPU (z = 0, C = 0.05): the global
    weights minus lr times the per-sample gradients, each clipped by plain autograd one sample at a
    time, summed over the probe's batch of 32 and divided by it."""
    from flcore.engine.weights import flatten

    built = built_run(tmp_path, tiny_config(backend=VECTORIZED, agent_plugins=[
        {"name": "dp_sgd", "noise_multiplier": 0.0, "clip_norm": 0.05, "delta": 1e-4}]))
    lockstep, model = built.backend.lockstep, built.model
    vector = flatten([p for p in model.parameters() if p.requires_grad])
    x, y, _ = lockstep._probe_inputs(32)
    stepped = torch.cat([p[0].reshape(-1) for p in lockstep.probe_step(vector, (x, y, torch.ones(1, 32))).values()])
    total = torch.zeros_like(vector)
    for i in range(32):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[0, i:i + 1]), y[0, i:i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
        total += g * min(1.0, 0.05 / float(g.norm()))
    torch.testing.assert_close(stepped, vector - 0.1 * total / 32, rtol=1e-5, atol=1e-6)


def test_memory_sized_chunks_give_the_one_chunk_model(tmp_path):
    """A budget that fits the plain step of four agents but not the private one's: the round trains
    in chunks, which give the same model as one chunk and as sequential."""
    config = ragged(0.9)
    plain = built_run(tmp_path / "p", {**ragged(0.9), "federation": {**config["federation"], "agent_plugins": [],
                                                                      "backend": VECTORIZED}})
    private = built_run(tmp_path / "d", {**config, "federation": {**config["federation"], "backend": VECTORIZED}})
    budget = 3 * private.backend.agent_mib
    assert 4 * plain.backend.agent_mib < budget  # without the per-sample gradients all four would fit
    with pytest.warns(UserWarning, match="vectorized: 4 agents train in chunks of up to 3"):
        chunked = run(tmp_path, config, {**VECTORIZED, "memory_budget_mib": budget}, "chunks")
    assert all(r["vectorized/chunks"] == 2 for r in chunked.history)
    assert_same_model(run(tmp_path, config, "sequential", "s"), chunked)


def test_a_gradient_plugin_without_a_vectorized_form_is_refused(tmp_path):
    from flcore_plugins.agent_plugins.dp_sgd import DPSGD

    from flcore import hookimpl
    from flcore.agent_plugin import AgentPlugin
    from flcore.errors import ConfigError

    class Unstacked(DPSGD):
        vectorized_gradients = AgentPlugin.vectorized_gradients

    class Plugins:
        @staticmethod
        @hookimpl
        def register_agent_plugins(register):
            register("unstacked", Unstacked, "Test agent-side plugin.")

    config = tiny_config(agent_plugins=["unstacked"], backend=VECTORIZED)
    with pytest.raises(ConfigError, match="'unstacked' implements compute_gradients but not vectorized_gradients"):
        Experiment(validate_config(config), plugins=[("test", Plugins)]).run(out_dir=tmp_path, progress=False)
