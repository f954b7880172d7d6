"""The Python entry point: an :class:`Experiment` built from a config, run federated or centrally.

``flcore run`` and this class drive the same code::

    from flcore import Experiment, load_config

    result = Experiment(load_config("mnist.yaml", ["federation.rounds=5"])).run(out_dir="runs")
    print(result.run_dir, result.final)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from flcore.config import ExperimentConfig, validate_config
from flcore.engine.result import RunResult
from flcore.errors import ConfigError
from flcore.registry import Registry, discover
from flcore.resolve import Resolved, resolve_components

__all__ = ["Experiment", "Resolved", "RunResult", "resolve_components"]


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
        progress: bool | str | None = None,
        stop_after_rounds: int | None = None,
    ) -> RunResult:
        """Run the experiment into a new folder under ``out_dir`` (or continue ``resume_dir``).

        ``progress``: ``True`` a bar, ``False`` no bar (a line per round at most every 10 s on
        stderr), ``"off"`` nothing, ``None`` as ``logging.progress`` says.
        """
        if self.federated:
            from flcore.engine.federated import run_federated

            return run_federated(self.config, self.components, self.provenance(), out_dir, resume_dir, progress,
                                 stop_after_rounds)
        if resume_dir is not None:
            raise ConfigError("--resume applies to federated runs; this config has no 'federation' section.")
        from flcore.engine.centralized import run_centralized

        return run_centralized(self.config, self.components, self.provenance(), out_dir, progress)

    def check(self) -> None:
        """Build everything a run builds before training, writing nothing; raise what the run would
        (:class:`flcore.errors.ConfigError` for data a component rejects, ...)."""
        if self.federated:
            from flcore.engine.federated import check_federated

            check_federated(self.config, self.components)
        else:
            from flcore.engine.assembly import build_data_and_model

            build_data_and_model(self.config, self.components)

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
