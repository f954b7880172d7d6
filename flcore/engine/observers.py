"""Lightning loggers and profilers built from the config, and device memory readings.

The engine does not run a Trainer, so it uses Lightning's loggers and profilers directly: loggers get
``log_metrics`` calls, the profiler times each phase of a round with ``profile(action)``.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from flcore.errors import ConfigError

_LOGGERS = {
    "csv": ("lightning.pytorch.loggers", "CSVLogger", None),
    "tensorboard": ("lightning.pytorch.loggers", "TensorBoardLogger", "tensorboard"),
    "mlflow": ("lightning.pytorch.loggers", "MLFlowLogger", "mlflow"),
    "wandb": ("lightning.pytorch.loggers", "WandbLogger", "wandb"),
}


def build_loggers(specs: list[Any], log_dir: Path, name: str) -> list[Any]:
    """Instantiate each configured Lightning logger under ``log_dir``."""
    import importlib
    import importlib.util

    loggers = []
    for index, spec in enumerate(specs):
        if spec.name not in _LOGGERS:
            raise ConfigError(
                f"logging.loggers[{index}].name = {spec.name!r}: unknown logger; "
                f"expected one of {', '.join(_LOGGERS)}."
            )
        module_name, class_name, requirement = _LOGGERS[spec.name]
        if requirement and importlib.util.find_spec(requirement) is None:
            raise ConfigError(
                f"logging.loggers[{index}].name = {spec.name!r} needs the '{requirement}' package, which is "
                f"not installed; install it with: pip install {requirement}"
            )
        cls = getattr(importlib.import_module(module_name), class_name)
        kwargs = dict(spec.params)
        if spec.name in ("csv", "tensorboard"):
            kwargs.setdefault("save_dir", str(log_dir))
            kwargs.setdefault("name", name)
        elif spec.name == "mlflow":
            kwargs.setdefault("experiment_name", name)
            # MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: SQLite in the run folder,
            # with the artifacts beside it (MLflow would put them in ./mlruns of the current folder)
            if "tracking_uri" not in kwargs:
                kwargs["tracking_uri"] = f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
                kwargs.setdefault("artifact_location", (log_dir / "mlartifacts").resolve().as_uri())
        elif spec.name == "wandb":
            kwargs.setdefault("save_dir", str(log_dir))
            kwargs.setdefault("name", name)
        try:
            loggers.append(cls(**kwargs))
        except TypeError as exc:
            raise ConfigError(f"logging.loggers[{index}] ({spec.name}): {exc}") from None
    return loggers


def build_profiler(kind: str | None, run_dir: Path, filename: str = "profile") -> Any:
    """A Lightning profiler writing its summary into the run folder (a no-op one when ``None``);
    a resumed run passes another ``filename`` so the first session's summary is kept."""
    from lightning.pytorch import profilers

    if kind is None:
        return profilers.PassThroughProfiler()
    if kind == "pytorch":
        # no step schedule: the engine has no training_step for it to count, so record throughout
        return profilers.PyTorchProfiler(dirpath=str(run_dir), filename=filename, schedule=None,
                                         sort_by_key="cpu_time_total", row_limit=100)
    cls = {"simple": profilers.SimpleProfiler, "advanced": profilers.AdvancedProfiler}[kind]
    return cls(dirpath=str(run_dir), filename=filename)


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak process memory, and the accelerator's allocated/reserved/peak memory, in MiB."""
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024
    stats = {"memory/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale}
    if device.type == "cuda":
        mib = 1024 * 1024
        stats["memory/device_allocated_mib"] = torch.cuda.memory_allocated(device) / mib
        stats["memory/device_reserved_mib"] = torch.cuda.memory_reserved(device) / mib
        stats["memory/device_peak_mib"] = torch.cuda.max_memory_allocated(device) / mib
    return stats


#: the run's files that a tracking server keeps beside its metrics, when the run folder has them
RUN_ARTIFACTS = ("config.yaml", "metrics.csv", "summary.json", "plugins.json", "partition.json", "sampling.csv")


def provenance_tags(provenance: dict[str, Any]) -> dict[str, str]:
    """plugins.json as flat tags: ``flcore.distribution.<name>`` = version, ``flcore.<kind>`` = who provided it."""
    tags = {f"flcore.distribution.{name}": str(version)
            for name, version in provenance.get("distributions", {}).items()}
    for kind, used in provenance.get("components", {}).items():
        tags[f"flcore.{kind}"] = ", ".join(f"{c['name']} ({c['provided_by']} {c['version']})" for c in used)
    return tags


def log_run_artifacts(loggers: list[Any], run_dir: Path) -> None:
    """Hand a finished run's files and plugin provenance to the loggers that keep artifacts.

    MLflow gets each file of :data:`RUN_ARTIFACTS` as an artifact and the provenance as tags; W&B gets
    the files saved with the run and the provenance in its config, and its run is finished. Other
    loggers keep metrics only.
    """
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    files = [run_dir / name for name in RUN_ARTIFACTS if (run_dir / name).is_file()]
    provenance = json.loads((run_dir / "plugins.json").read_text()) if (run_dir / "plugins.json").is_file() else {}
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            for path in files:
                client.log_artifact(run_id, str(path))
            for key, value in provenance_tags(provenance).items():
                client.set_tag(run_id, key, value)
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            for path in files:
                run.save(str(path), base_path=str(run_dir), policy="now")
            run.config.update({"flcore_provenance": provenance}, allow_val_change=True)
            run.finish()  # Lightning leaves it open: the next experiment in this process would log into it
