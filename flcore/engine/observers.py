"""Lightning loggers and profilers built from the config, and device memory readings.

The engine does not run a Trainer, so it uses Lightning's loggers and profilers directly: loggers get
``log_metrics`` calls, the profiler times each phase of a round with ``profile(action)``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Mapping

import torch

from flcore.errors import ConfigError


@dataclass(frozen=True)
class _LoggerKind:
    """A Lightning logger flcore builds, and which of its keyword arguments are places on disk."""

    module: str
    class_name: str
    requirement: str | None
    folders: tuple[str, ...] = ()  # relative folders, placed under <run>/logs
    subpaths: tuple[str, ...] = ()  # relative paths the logger joins under its own folder
    file_parts: tuple[str, ...] = ()  # parts of a file name: no folder separators
    locations: tuple[str, ...] = ()  # URIs: remote servers only; flcore keeps local stores in the run folder
    forwards_to: tuple[str, str] | None = None  # the callable that receives the logger's **kwargs
    set_here: tuple[str, ...] = ()  # arguments the logger or flcore sets, which a config may not


_LOGGERS = {
    "csv": _LoggerKind("lightning.pytorch.loggers", "CSVLogger", None, folders=("save_dir",), subpaths=("version",)),
    "tensorboard": _LoggerKind("lightning.pytorch.loggers", "TensorBoardLogger", "tensorboard",
                               folders=("save_dir",), subpaths=("version", "sub_dir"), file_parts=("filename_suffix",),
                               forwards_to=("torch.utils.tensorboard", "SummaryWriter"), set_here=("log_dir",)),
    "mlflow": _LoggerKind("lightning.pytorch.loggers", "MLFlowLogger", "mlflow", folders=("save_dir",),
                          locations=("tracking_uri", "artifact_location")),
    "wandb": _LoggerKind("lightning.pytorch.loggers", "WandbLogger", "wandb", folders=("save_dir", "dir"),
                         forwards_to=("wandb", "init")),
}
_LOCAL_SCHEMES = ("", "file", "sqlite")


def check_logger(name: str, arguments: Mapping[str, Any], where: str) -> None:
    """Raise ValueError unless ``name`` is a logger flcore builds, installed, and ``arguments`` fit
    the Lightning class's signature and stay inside the run folder. The class is inspected, never
    instantiated, so that ``flcore validate`` can check a config without side effects. ``where`` is
    the config path of the logger's section, for the message."""
    import importlib.util

    kind = _LOGGERS.get(name)
    if kind is None:
        raise ValueError(f"{where}.name = {name!r}: unknown logger; expected one of {', '.join(_LOGGERS)}")
    for key, value in arguments.items():
        problem = _place_problem(kind, key, value)
        if problem:
            raise ValueError(f"{where}.{key} = {value!r}: {problem}")
    if kind.requirement and importlib.util.find_spec(kind.requirement) is None:
        raise ValueError(f"{where}.name = {name!r} needs the '{kind.requirement}' package, which is not "
                         f"installed; install it with: pip install {kind.requirement}")
    if arguments:
        _check_signature(kind, arguments, where)


def _place_problem(kind: _LoggerKind, key: str, value: Any) -> str | None:
    if key in kind.set_here:
        return "chosen inside the run folder by flcore and Lightning; leave it out"
    if key in kind.folders + kind.subpaths and value is not None and not isinstance(value, int):
        path = PurePath(str(value))
        if path.is_absolute() or ".." in path.parts or str(value).startswith("~"):
            where = "the run folder's logs/" if key in kind.folders else "the logger's folder"
            return (f"must be a relative path inside {where} (no absolute path, no '..', no '~'), so that every "
                    "record stays in the run folder")
    if key in kind.file_parts and isinstance(value, str) and ("/" in value or "\\" in value):
        return "is part of a file name in the run folder and may not contain a folder separator"
    if key in kind.locations and isinstance(value, str):
        from urllib.parse import urlsplit

        scheme = urlsplit(value).scheme.lower()
        if scheme in _LOCAL_SCHEMES or len(scheme) == 1:  # one letter: a Windows drive
            return ("is a local store, which a config may not name (it would write outside the run folder): leave it "
                    "out for flcore's store in logs/mlflow.db, give a remote tracking server (http://, https://, "
                    "databricks, ...), or set the MLFLOW_TRACKING_URI environment variable for a shared local store")
    return None


def _check_signature(kind: _LoggerKind, arguments: Mapping[str, Any], where: str) -> None:
    """Unknown arguments and wrongly typed ones, from the annotations of the class (and of where its
    ``**kwargs`` go, when that is installed)."""
    import importlib
    import inspect

    from pydantic import TypeAdapter, ValidationError

    accepted: dict[str, Any] = {}
    open_ended = False
    targets = [getattr(importlib.import_module(kind.module), kind.class_name).__init__]
    if kind.forwards_to is not None:
        try:
            targets.append(getattr(importlib.import_module(kind.forwards_to[0]), kind.forwards_to[1]))
        except (ImportError, AttributeError):  # cannot see where **kwargs go: accept them
            open_ended = True
    for index, target in enumerate(targets):
        for parameter in list(inspect.signature(target).parameters.values())[1 if index == 0 else 0:]:
            if parameter.kind is parameter.VAR_KEYWORD:
                open_ended = open_ended or kind.forwards_to is None
            elif parameter.kind is not parameter.VAR_POSITIONAL and parameter.name not in kind.set_here:
                accepted.setdefault(parameter.name, parameter.annotation)
    accepted.pop("name", None)  # a logger's 'name' is the experiment's name
    for key, value in arguments.items():
        if key not in accepted:
            if open_ended:
                continue
            raise ValueError(f"{where}.{key} is not an argument of Lightning's {kind.class_name}; it accepts "
                             f"{', '.join(accepted)}")
        annotation = accepted[key]
        if annotation is inspect.Parameter.empty:
            continue
        try:
            adapter = TypeAdapter(annotation)
        except Exception:  # an annotation pydantic cannot read (a forward reference): not checked
            continue
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            raise ValueError(f"{where}.{key} = {value!r}: {exc.errors()[0]['msg']}") from None


def build_loggers(specs: list[Any], log_dir: Path, name: str) -> list[Any]:
    """Instantiate each configured Lightning logger under ``log_dir`` (checked as :func:`check_logger`)."""
    import importlib

    loggers = []
    for index, spec in enumerate(specs):
        try:
            check_logger(spec.name, spec.params, f"logging.loggers[{index}]")
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None
        kind = _LOGGERS[spec.name]
        cls = getattr(importlib.import_module(kind.module), kind.class_name)
        kwargs = dict(spec.params)
        for key in kind.folders:
            if kwargs.get(key) is not None:
                kwargs[key] = str(log_dir / str(kwargs[key]))
        if spec.name in ("csv", "tensorboard"):
            kwargs.setdefault("save_dir", str(log_dir))
            kwargs.setdefault("name", name)
        elif spec.name == "mlflow":
            kwargs.setdefault("experiment_name", name)
            # MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: SQLite in the run folder,
            # with the artifacts beside it (MLflow would put them in ./mlruns of the current folder). A store
            # outside the run folder comes from the environment (the user's), never from the config.
            if "tracking_uri" not in kwargs:
                kwargs["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or \
                    f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
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
