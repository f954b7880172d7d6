"""The Python entry point: an :class:`Experiment` built from a config, run federated or centrally.

``flcore run`` and this class drive the same code::

    from flcore import Experiment, load_config

    result = Experiment(load_config("mnist.yaml", ["federation.rounds=5"])).run(out_dir="runs")
    print(result.run_dir, result.final)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from flcore.config import ExperimentConfig, validate_config
from flcore.errors import ConfigError
from flcore.params import ComponentParams, validate_params
from flcore.registry import Component, Registry, discover


@dataclass(frozen=True)
class Resolved:
    """A component chosen by a config section, with its validated parameters."""

    component: Component
    params: ComponentParams
    where: str

    def build(self, *args: Any) -> Any:
        """Construct it as ``target(params, *args)``."""
        return self.component.load()(self.params, *args)

    @contextlib.contextmanager
    def rejecting(self) -> Iterator[None]:
        """Turn a ValueError raised inside (the component rejecting this experiment's data) into a
        ConfigError naming the config section: bad input, not a crash."""
        try:
            yield
        except ValueError as exc:
            raise ConfigError(f"{self.where} '{self.component.name}' cannot be used here: {exc}") from None


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    final: dict[str, Any]
    state_dict: dict[str, Any] = field(repr=False, default_factory=dict)
    rank: int = 0  # the process's rank under the distributed backend; only rank 0 writes


def resolve_components(config: ExperimentConfig, registry: Registry) -> dict[str, Any]:
    """Resolve every component the config names and validate its parameters.

    Raises :class:`flcore.errors.PluginError` or :class:`flcore.errors.ConfigError` before any work.
    """
    sections = {"dataset": ("dataset", config.dataset), "model": ("model", config.model)}
    federation = config.federation
    if federation is not None:
        sections["partitioner"] = ("federation.partitioner", federation.partitioner)
        sections["sampler"] = ("federation.sampler", federation.sampler)
        sections["aggregator"] = ("federation.aggregator", federation.aggregator)
    resolved: dict[str, Any] = {}
    for kind, (where, spec) in sections.items():
        component = registry.resolve(kind, spec.name)
        resolved[kind] = Resolved(component, validate_params(component, spec.params, where), where)
    if federation is not None:
        if federation.agent_metadata is None:
            specs = [(c.qualified_name, {}) for c in registry.all("agent_metadata")]
        else:
            specs = [(s.name, s.params) for s in federation.agent_metadata]
        resolved["agent_metadata"] = []
        for index, (name, params) in enumerate(specs):
            component = registry.resolve("agent_metadata", name)
            where = f"federation.agent_metadata[{index}]"
            resolved["agent_metadata"].append(Resolved(component, validate_params(component, params, where), where))
    return resolved


class Experiment:
    """A validated experiment: every component resolved, nothing built or trained yet."""

    def __init__(
        self,
        config: ExperimentConfig | dict[str, Any],
        registry: Registry | None = None,
        plugins: Iterable[tuple[str, object]] = (),
    ) -> None:
        self.config = config if isinstance(config, ExperimentConfig) else validate_config(config)
        self.registry = registry if registry is not None else discover(extra_plugins=plugins)
        self.components = resolve_components(self.config, self.registry)

    @property
    def federated(self) -> bool:
        return self.config.federation is not None

    def run(
        self,
        out_dir: str | Path = "runs",
        resume_dir: str | Path | None = None,
        progress: bool | None = None,
        stop_after_rounds: int | None = None,
    ) -> RunResult:
        """Run the experiment into a new folder under ``out_dir`` (or continue ``resume_dir``)."""
        if self.federated:
            from flcore.engine.federated import run_federated

            return run_federated(self, out_dir, resume_dir, progress, stop_after_rounds)
        if resume_dir is not None:
            raise ConfigError("--resume applies to federated runs; this config has no 'federation' section.")
        from flcore.engine.centralized import run_centralized

        return run_centralized(self, out_dir, progress)

    def provenance(self) -> dict[str, Any]:
        """Installed plugin distributions and the components this experiment uses."""
        used = {}
        for kind, value in self.components.items():
            items = value if isinstance(value, list) else [value]
            used[kind] = [
                {"name": r.component.name, "provided_by": r.component.provider, "version": r.component.version}
                for r in items
            ]
        return {
            "distributions": self.registry.distributions(),
            "components": used,
            "failed_plugins": [f.__dict__ for f in self.registry.failures],
        }
