"""``flcore sweep``: one experiment over a grid of settings (and random draws) and seeds, summarised.

Each run is an ordinary run folder, ``<sweep>/runs/<key>/<name>-<timestamp>/``. A run's key comes from
its setting and seed (a readable slug, a hash of the run's whole config, the seed), so the same sweep
started again finds its runs: a finished run (one with summary.json) is skipped, a killed run
continues from its last checkpoint exactly as ``flcore run --resume`` would, and a run killed before
its first checkpoint starts again in a clean folder. The summary (``summary.csv``, ``summary.md``) is
computed from the run folders alone, so it is the same whether the sweep ran straight through or was
killed and resumed.

Why not Hydra's multirun or Optuna: flcore's config is a pydantic model with ``--set`` dotted overrides
and plugin-validated component sections; Hydra would bring a second config system (OmegaConf
composition, its own output folders) that every key would have to pass through, and Optuna is an
optimiser that asks for one objective and owns the trial order, where a paper's table wants every
cell of a grid, run on several seeds, resumable from plain folders. A grid is ``itertools.product``,
random search is a seeded NumPy draw, and the worker pool is ``concurrent.futures``: there is little
left for a framework to do.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import yaml

from flcore.errors import RunFailure, UserError
from flcore.runfiles import RunFiles
from flcore.sweep_plan import (
    EVENTS_FILE,
    SWEEP_FILE,
    PlannedRun,
    RandomSearch,
    Range,
    SweepSpec,
    _draw,
    label_of,
    parse_spec,
    plan,
    planned_rounds,
    read_sweep_file,
    run_state,
    settings,
    sweep_from_options,
)

if TYPE_CHECKING:
    from flcore.sweep_summary import SweepResults

__all__ = ["EVENTS_FILE", "SWEEP_FILE", "Outcome", "PlannedRun", "RandomSearch", "Range", "SweepSpec", "_draw",
           "label_of", "parse_spec", "plan", "planned_rounds", "read_sweep_file", "run_state", "run_sweep",
           "settings", "sweep_from_options"]


@dataclass(frozen=True)
class _Task:
    key: str
    config: dict[str, Any]
    folder: str  # <sweep>/runs/<key>
    lock: str  # <sweep>/locks/<key>.lock
    events: str


@dataclass(frozen=True)
class Outcome:
    """What a worker did with one run: started, resume(d), restart(ed) or skip(ped); and any error."""

    key: str
    action: str
    error: str | None = None
    final: dict[str, Any] = field(default_factory=dict)


def _open_append(path: str) -> int:
    """A file descriptor appending to ``path``, which may not be a link (the folder may come from anyone)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise UserError(f"'{path}' cannot be opened for writing ({exc.strerror}); is it a symbolic link?") from None


def _log_event(path: str, **event: Any) -> None:
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()} | event) + "\n"
    fd = _open_append(path)
    try:
        os.write(fd, line.encode("utf-8"))  # one short write: appended whole
    finally:
        os.close(fd)


@contextlib.contextmanager
def _held(lock_path: str, key: str) -> Iterator[None]:
    with os.fdopen(_open_append(lock_path), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {key} is being run by another process (another sweep on the same folder, or a "
                            "worker of a killed sweep that is still finishing); wait for it, or end it.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

def _execute(task: _Task) -> Outcome:
    """Bring one run to its end: skip, resume, restart or start it (in a worker or in-process)."""
    try:
        with _held(task.lock, task.key):
            return _bring_to_end(task)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # reported by the sweep, which goes on with the other runs
        message = str(exc) if isinstance(exc, (UserError, RunFailure)) else f"{type(exc).__name__}: {exc}"
        _log_event(task.events, run=task.key, event="failed", error=message)
        return Outcome(task.key, "failed", message)


def _bring_to_end(task: _Task) -> Outcome:
    from flcore.config import config_to_dict, load_config, validate_config
    from flcore.experiment import Experiment

    folder = Path(task.folder)
    state, run = run_state(folder, planned_rounds(task.config))
    if state == "finished":
        return Outcome(task.key, "skipped")
    if state == "checkpointed":
        saved = load_config(run / "config.yaml")
        if config_to_dict(saved) != task.config:
            raise UserError(f"'{run}/config.yaml' is not the config this sweep plans for run {task.key}; "
                            "remove the folder to run it again.")
        _log_event(task.events, run=task.key, event="resume", folder=str(run))
        result = Experiment(saved).run(resume_dir=run, progress=False)
        action = "resumed"
    else:
        if state != "new":  # killed before its first checkpoint: nothing worth keeping
            shutil.rmtree(run)
        _log_event(task.events, run=task.key, event="restart" if state != "new" else "start")
        result = Experiment(validate_config(task.config)).run(out_dir=folder, progress=False)
        action = "restarted" if state != "new" else "started"
    _log_event(task.events, run=task.key, event="finish", folder=str(result.run_dir))
    return Outcome(task.key, action, final=dict(result.final.get("final", {})))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _outcomes(tasks: list[_Task], jobs: int) -> Iterator[Outcome]:
    jobs = min(jobs, len(tasks))
    if jobs <= 1:
        for task in tasks:
            yield _execute(task)
        return
    # Workers fork from a clean server process that imported torch once: no forked threads or CUDA state,
    # and no second import of torch per worker (spawn's cost); spawn where there is no fork.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "flcore.experiment", "flcore.engine.federated"])
    else:
        context = multiprocessing.get_context("spawn")
    threads = max(1, _cores() // jobs)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                                initargs=(threads,)) as pool:
        futures = [pool.submit(_execute, task) for task in tasks]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def run_sweep(base: dict[str, Any], spec: SweepSpec, out: str | Path, jobs: int = 1, strict: bool | None = None,
              echo: Callable[[str], None] = print) -> SweepResults:
    """Run every planned run not yet finished (``jobs`` at a time) and write the summary."""
    from flcore.engine.checkpoint import write_text
    from flcore.experiment import Experiment
    from flcore.registry import discover

    out = Path(out)
    runs = plan(base, spec)
    registry = discover(strict=strict)
    for run in runs[:: len(spec.seeds)]:  # resolve every component before the first run starts
        Experiment(run.config, registry=registry)
    for folder in ("runs", "locks"):
        RunFiles(out).path(folder).mkdir(parents=True, exist_ok=True)
    write_text(out / SWEEP_FILE, yaml.safe_dump(base | {"sweep": spec.model_dump(mode="json", exclude_none=True)},
                                                sort_keys=False))
    tasks = [_Task(r.key, r.config, str(out / "runs" / r.key), str(out / "locks" / f"{r.key}.lock"),
                   str(out / EVENTS_FILE)) for r in runs]
    states = [run_state(Path(t.folder), planned_rounds(t.config))[0] for t in tasks]
    echo(f"sweep {out}: {len(runs)} runs ({len(runs) // len(spec.seeds)} settings x {len(spec.seeds)} seeds): "
         f"{states.count('finished')} finished, {states.count('checkpointed')} to resume, "
         f"{len(runs) - states.count('finished') - states.count('checkpointed')} to run; {jobs} at a time")
    pending = [t for t, s in zip(tasks, states) if s != "finished"]
    failures = []
    for done, outcome in enumerate(_outcomes(pending, jobs), start=1):
        shown = ", ".join(f"{k}={outcome.final[k]:.4f}" for k in spec.metrics
                          if isinstance(outcome.final.get(k), (int, float)))
        echo(f"[{done}/{len(pending)}] {outcome.action} {outcome.key}" + (f" ({shown})" if shown else "")
             + (f": {outcome.error}" if outcome.error else ""))
        if outcome.error:
            failures.append(outcome)
    from flcore.sweep_summary import read_sweep

    results = read_sweep(out)
    results.write_summary()
    echo(f"summary: {out / 'summary.csv'}, {out / 'summary.md'}")
    try:
        from flcore.sweep_summary import sweep_report

        echo(f"report: {sweep_report(out)}")
    except UserError as exc:  # matplotlib is optional: the summary stands without the figure
        echo(f"no report: {exc}")
    if failures:
        raise RunFailure(f"{len(failures)} of {len(runs)} runs failed ({', '.join(f.key for f in failures)}); "
                         f"the summary covers the others. Their errors are in {out / EVENTS_FILE}.")
    return results
