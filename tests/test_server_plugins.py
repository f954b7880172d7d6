"""Built-in server-side plugins against NumPy references, and their composition around strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore import hookimpl
from flcore.config import validate_config
from flcore.experiment import Experiment
from flcore.protocol import AgentResult, Aggregate
from flcore.server_plugin import ServerPlugin
from flcore.testing import build, check_server_plugin, round_context


def test_norm_bound_honours_the_interface():
    check_server_plugin("norm_bound", max_norm=0.5, noise_std=0.1)
    check_server_plugin("norm_bound", strategy="krum", max_norm=0.5)


def test_norm_bound_clips_each_update_to_its_norm_and_adds_seeded_noise():
    rng = np.random.default_rng(1)
    deltas = rng.normal(size=(5, 9)) * np.array([0.1, 1, 3, 0.2, 10])[:, None]
    plugin = build("server_plugin", "norm_bound", max_norm=1.0, noise_std=0.05)
    context = round_context(2, dim=9)
    updates = [AgentResult(i, torch.tensor(d), 10) for i, d in enumerate(deltas)]
    for update in updates:
        plugin.process_update(context, update)
    norms = np.linalg.norm(deltas, axis=1, keepdims=True)
    expected = deltas * np.minimum(1.0, 1.0 / norms)
    np.testing.assert_allclose(np.stack([u.delta.numpy() for u in updates]), expected, rtol=1e-12)
    aggregate = Aggregate(torch.zeros(9, dtype=torch.float64))
    plugin.process_aggregate(context, torch.zeros(9, dtype=torch.float64), aggregate)
    noise = context.rng(plugin).normal(0.0, 0.05, size=9)
    np.testing.assert_allclose(aggregate.vector.numpy(), noise, rtol=1e-12)
    assert context.metrics["norm_bound/clipped_share"] == float((norms > 1).mean())


ORDER: list[str] = []


class _Named(ServerPlugin):
    """Records when it touches an update or the aggregate."""

    def process_update(self, context, update):
        ORDER.append(f"{self.component_name}:update")

    def process_sum(self, context, total):
        ORDER.append(f"{self.component_name}:sum")

    def process_aggregate(self, context, global_vector, aggregate):
        ORDER.append(f"{self.component_name}:aggregate")


class _HalfStep(ServerPlugin):
    """Doubles the denominator of the strategy's sum: the mean update is halved."""

    def process_sum(self, context, total):
        total.weight *= 2


class _Plugins:
    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("outer", _Named, "Test.")
        register("inner", _Named, "Test.")
        register("half_step", _HalfStep, "Test.")


def test_server_plugins_compose_outermost_first(tmp_path, tiny_config):
    """[outer, inner] around the strategy: each update goes outer then inner, so does the sum of
    updates (before the strategy divides it), the aggregate inner then outer."""
    tiny_config["federation"].update(rounds=1, sampler={"name": "uniform", "count": 2},
                                     server_plugins=["outer", "inner"])
    ORDER.clear()
    Experiment(validate_config(tiny_config), plugins=[("t", _Plugins)]).run(out_dir=tmp_path)
    assert ORDER == ["outer:update", "inner:update", "outer:update", "inner:update",
                     "outer:sum", "inner:sum", "inner:aggregate", "outer:aggregate"]


@pytest.mark.parametrize("attacks", [[], [{"name": "alie", "count": 1}]])
def test_process_sum_changes_the_sum_the_strategy_divides(tmp_path, tiny_config, attacks):
    """Doubling the denominator around FedAvg is FedAvg at half the server learning rate, streamed or
    not (a colluding attack overrides on_results, so the round holds its updates)."""
    tiny_config["federation"].update(rounds=1, server_plugins=["half_step"], agent_plugins=attacks)
    halved = Experiment(validate_config(tiny_config), plugins=[("t", _Plugins)]).run(out_dir=tmp_path / "a")
    tiny_config["federation"].update(server_plugins=[], aggregator={"name": "fedavg", "server_lr": 0.5})
    plain = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "b")
    for name, value in plain.state_dict.items():
        torch.testing.assert_close(halved.state_dict[name], value, rtol=1e-5, atol=1e-6)


def test_a_plugin_that_changes_the_sum_refuses_a_strategy_without_one(tmp_path, tiny_config):
    from flcore.errors import ConfigError

    tiny_config["federation"].update(rounds=1, aggregator="fedmedian", server_plugins=["half_step"])
    with pytest.raises(ConfigError, match=r"cannot wrap aggregator 'fedmedian' .* does not declare sum_based"):
        Experiment(validate_config(tiny_config), plugins=[("t", _Plugins)]).run(out_dir=tmp_path)


def test_a_norm_bound_changes_training_and_reports_what_it_clipped(tmp_path, tiny_config):
    tiny_config["federation"].update(rounds=1, server_plugins=[{"name": "norm_bound", "max_norm": 0.01}])
    tight = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "a")
    assert tight.history[0]["norm_bound/clipped_share"] == 1.0
    tiny_config["federation"]["server_plugins"] = []
    plain = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "b")
    assert any(not torch.allclose(tight.state_dict[k], v) for k, v in plain.state_dict.items())
