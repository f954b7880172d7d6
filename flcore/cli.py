"""The ``flcore`` command line.

Exit codes: 0 success, 2 bad input (config, unknown plugin), 1 failure during the run. Bad input
prints one paragraph, never a traceback, unless ``--debug`` is given. This module imports neither
torch nor Lightning at import time, so ``flcore --help`` answers fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from flcore import __version__
from flcore.kinds import kind_names


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn flcore's errors into one-paragraph messages and exit codes (2 bad input, 1 failure)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flcore.errors import UserError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except UserError as exc:
            if debug:
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # output piped into `head`: stop quietly, as the Python docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:  # a failure during the run: message only, traceback with --debug
            if debug:
                raise
            if getattr(exc, "exit_code", None) == 130:  # an interrupted run: its message says how to resume
                _fail(str(exc), 130)
            _fail(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)

    return wrapper


strict_option = click.option(
    "--strict", is_flag=True, default=None, help="Fail if any plugin fails to load (or FLCORE_STRICT_PLUGINS=1)."
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value by dotted key, e.g. --set federation.rounds=5 (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flcore")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
def main(debug: bool) -> None:
    """flcore: federated learning experiments from a config file, with plugins for every component."""
    if not debug:  # a warning is one line for people, not a source location
        import warnings

        warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


@main.command("list-plugins")
@click.option("--kind", type=click.Choice(kind_names()))
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON shape documented in docs/cli.md.")
@strict_option
@handle_errors
def list_plugins(kind: str | None, as_json: bool, strict: bool | None) -> None:
    """List every component the installed plugins provide."""
    from flcore.registry import as_mapping, discover

    registry = discover(strict=strict)
    components = registry.all(kind)
    if as_json:
        click.echo(json.dumps({
            "components": [dict(as_mapping(c)) for c in components],
            "distributions": registry.distributions(),
            "failed": [f.__dict__ for f in registry.failures],
        }, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("KIND", "NAME", "PROVIDED BY", "VERSION", "DESCRIPTION"):
        table.add_column(column, overflow="fold")
    for c in components:
        table.add_row(c.kind, c.name, c.provider, c.version, c.description)
    console = Console(width=max(Console().width, 120) if not sys.stdout.isatty() else None)
    console.print(table)
    for failure in registry.failures:
        console.print(f"[yellow]failed to load[/yellow] {failure.plugin} ({failure.provider} {failure.version}): "
                      f"{failure.error}", markup=True, highlight=False)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder under which the run folder is created.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this folder from its last checkpoint.")
@click.option("--progress/--no-progress", default=None,
              help="A progress bar, or none (then one line per round at most every 10 s on stderr).")
@click.option("--quiet", "-q", is_flag=True, help="Print no progress at all.")
@click.option("--devices", help="Processes (devices) for the distributed backend; sets runtime.devices and "
              "federation.backend=distributed when above 1.")
@click.option("--num-nodes", type=int, help="Machines for the distributed backend (runtime.num_nodes).")
@strict_option
@handle_errors
def run(config: Path | None, overrides: tuple[str, ...], out_dir: Path, resume_dir: Path | None,
        progress: bool | None, quiet: bool, devices: str | None, num_nodes: int | None, strict: bool | None) -> None:
    """Run an experiment; without CONFIG, the embedded default (no download needed)."""
    from flcore.config import load_config

    extra = []
    if devices is not None:
        extra.append(f"runtime.devices={devices}")
        if devices not in ("1", "auto") or (num_nodes or 1) > 1:
            extra.append("federation.backend=distributed")
    if num_nodes is not None:
        extra += [f"runtime.num_nodes={num_nodes}", "federation.backend=distributed"]
    overrides = tuple(extra) + overrides

    if resume_dir is not None:
        resolved = _resumable_config(resume_dir, config, overrides)
    else:
        resolved = load_config(config, overrides)
    experiment = _experiment(resolved, strict)
    result = experiment.run(out_dir=out_dir, resume_dir=resume_dir, progress="off" if quiet else progress)
    _report(result)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", "out_dir", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--like", "like_run", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Baseline of a federated run: its config, for as many passes over the data as its agents made.")
@click.option("--progress/--no-progress", default=None)
@strict_option
@handle_errors
def train(config: Path | None, overrides: tuple[str, ...], out_dir: Path, like_run: Path | None,
          progress: bool | None, strict: bool | None) -> None:
    """Train CONFIG's model centrally on the whole dataset: the non-federated baseline."""
    from flcore.config import apply_overrides, default_config_data, read_config_file, validate_config, with_defaults
    from flcore.errors import ConfigError

    if like_run is not None:
        if config is not None:
            raise ConfigError("--like takes the config from the run folder; give no CONFIG with it.")
        config = like_run / "config.yaml"
        data = read_config_file(config)
        passes = _passes_of(like_run, (data.get("training") or {}).get("epochs", 1))
        epochs = max(1, round(passes))
        overrides = (f"training.epochs={epochs}", f"name={data.get('name', 'run')}-central", *overrides)
        click.echo(f"{like_run.name}: its agents made {passes:.2f} passes over the training data; "
                   f"training centrally for {epochs} epochs")
    else:
        data = default_config_data() if config is None else read_config_file(config)
    data = apply_overrides(with_defaults(data), overrides)
    data["federation"] = None
    experiment = _experiment(validate_config(data, str(config or "default config")), strict)
    _report(experiment.run(out_dir=out_dir, progress=progress))


def _passes_of(run_dir: Path, local_epochs: int) -> float:
    """Passes over the training split that a federated run's local training made, from its records."""
    from flcore.engine.rundir import read_csv
    from flcore.errors import ConfigError

    if not (run_dir / "sampling.csv").is_file():
        raise ConfigError(f"--like {run_dir}: no sampling.csv there; is it a finished federated run folder?")
    rows = read_csv(run_dir / "sampling.csv")
    trained = sum(int(r["times_selected"]) * int(r["samples"]) for r in rows)
    held = sum(int(r["samples"]) for r in rows)
    return trained * local_epochs / max(held, 1)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@set_option
@strict_option
@handle_errors
def validate(config: Path, overrides: tuple[str, ...], strict: bool | None) -> None:
    """Check CONFIG: its structure, every component's parameters against its plugin, and everything
    `flcore run` builds before training (data, model, partition, backend), writing nothing."""
    from flcore.config import load_config

    experiment = _experiment(load_config(config, overrides), strict)
    experiment.check()
    names = {k: "+".join(r.component.qualified_name for r in (v if isinstance(v, list) else [v]))
             for k, v in experiment.components.items() if v}
    click.echo(f"{config}: valid. Components: " + ", ".join(f"{k}={n}" for k, n in names.items()))


@main.command()
@click.argument("kind", type=click.Choice(kind_names()))
@click.argument("name")
@click.option("--dataset", help="model: count parameters for this dataset's inputs and classes.")
@click.option("--mode", type=click.Choice(["scratch", "finetune", "feature_extract"]),
              help="model: count parameters in this transfer-learning mode (with a random backbone).")
@click.option("--param", "model_params", multiple=True, metavar="KEY=VALUE", help="model: a parameter (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@strict_option
@handle_errors
def describe(kind: str, name: str, dataset: str | None, mode: str | None, model_params: tuple[str, ...],
             as_json: bool, strict: bool | None) -> None:
    """Show a component's parameters, defaults and documentation; for a model with --dataset, its
    trainable, frozen and total parameter counts (the paper's Table 3)."""
    import inspect

    from flcore.registry import as_mapping, describe_params, discover

    registry = discover(strict=strict)
    component = registry.resolve(kind, name)
    params = describe_params(component.params_model())
    doc = inspect.getdoc(component.load()) or ""
    counts = None
    if kind == "model" and dataset is not None:
        counts = _model_counts(registry, component, dataset, mode, model_params)
    elif dataset or mode or model_params:
        raise click.UsageError("--dataset, --mode and --param apply to 'describe model NAME --dataset D'.")
    if as_json:
        click.echo(json.dumps({**as_mapping(component), "doc": doc, "params": params, "parameter_counts": counts},
                              indent=2, default=str))
        return
    if counts is not None:
        click.echo(f"{name} on {dataset} ({mode or 'as configured'}): trainable {counts['trainable']:,}, "
                   f"frozen {counts['frozen']:,}, total {counts['total']:,}")
    click.echo(f"{kind} {component.qualified_name} ({component.version})")
    click.echo(f"  {component.description}")
    if doc:
        click.echo("\n" + "\n".join("  " + line for line in doc.splitlines()))
    click.echo("\nParameters:" if params else "\nParameters: none")
    for p in params:
        default = "required" if p["required"] else f"default {p['default']!r}"
        click.echo(f"  {p['name']} ({p['type']}, {default}){': ' + p['description'] if p['description'] else ''}")


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw labels per agent as a stacked bar chart (the paper's Figure 6) into this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print statistics and per-agent label counts as JSON.")
@strict_option
@handle_errors
def partition(config: Path | None, overrides: tuple[str, ...], plot_file: Path | None, as_json: bool,
              strict: bool | None) -> None:
    """Split CONFIG's dataset among its agents and show how labels are spread."""
    from flcore import seeding
    from flcore.config import load_config
    from flcore.errors import ConfigError

    experiment = _experiment(load_config(config, overrides), strict)
    if experiment.config.federation is None:
        raise ConfigError("partition needs a config with a 'federation' section.")
    data = experiment.components["dataset"].build()
    labels = data.train_labels
    split = experiment.components["partitioner"].build().split(
        labels, experiment.config.federation.agents, seeding.numpy_rng(experiment.config.seed, seeding.PARTITION),
        data.groups)
    counts = split.label_counts(labels, data.num_classes)
    stats = split.statistics(labels, data.num_classes)
    if as_json:
        click.echo(json.dumps({"statistics": stats, "label_counts": counts.tolist()}))
    else:
        for key, value in stats.items():
            click.echo(f"{key:24s} {value:g}")
    if plot_file is not None:
        from flcore.plots import save_label_distributions

        name = experiment.config.federation.partitioner.name
        save_label_distributions([(f"{data.name}, {name}", counts)], plot_file)
        click.echo(f"plot: {plot_file}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the PNGs and index.html (default: RUN_DIR/report, or ./report for several runs).")
@handle_errors
def report(run_dirs: tuple[Path, ...], out_dir: Path | None) -> None:
    """Plot a run (or overlay several) as PNG files and one HTML page."""
    from flcore.errors import UserError
    from flcore.report import report as write_report
    from flcore.sweep_summary import is_sweep, sweep_report

    if any(is_sweep(folder) for folder in run_dirs):
        if len(run_dirs) > 1:
            raise UserError("give one sweep folder alone, not with other folders.")
        click.echo(f"report: {sweep_report(run_dirs[0], out_dir)}")
        return
    click.echo(f"report: {write_report(run_dirs, out_dir)}")


@main.command("new-plugin")
@click.option("--kind", required=True, type=click.Choice(["aggregator", "sampler", "partitioner", "agent_plugin",
                                                            "server_plugin", "backend", "availability",
                                                            "device_profile", "round_policy"]))
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def new_plugin(kind: str, name: str, directory: Path) -> None:
    """Write a ready-to-install plugin package for a new component NAME."""
    from flcore.newplugin import write_plugin

    target = write_plugin(kind, name, directory)
    click.echo(f"wrote {target}: cd {target} && pip install -e '.[test]' && pytest")


@main.command("convert-trace")
@click.option("--from", "source_format", required=True, type=click.Choice(["fedscale-behaviour", "fedscale-devices"]),
              help="fedscale-behaviour: FedScale's client_behave_trace (online intervals); fedscale-devices: its "
              "client_device_capacity (speeds).")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), help="Keep the first N clients (in id order) only.")
@handle_errors
def convert_trace(source_format: str, source: Path, target: Path, limit: int | None) -> None:
    """Write SOURCE, a trace in another simulator's format, as flcore's CSV TARGET (never unpickling objects)."""
    from flcore.fedscale_traces import CONVERTERS

    counts = CONVERTERS[source_format](source, target, limit)
    click.echo(f"wrote {target}: " + ", ".join(f"{value:,} {key}" for key, value in counts.items()))


@main.command()
@handle_errors
def schema() -> None:
    """Print the JSON schema of the experiment config."""
    from flcore.config import ExperimentConfig

    click.echo(json.dumps(ExperimentConfig.model_json_schema(), indent=2))


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--grid", multiple=True, metavar="KEY=[V1,V2]", help="Values of a config key to try (a YAML list, or "
              "V1,V2), crossed with the other --grid keys and the file's 'sweep.grid' (repeatable).")
@click.option("--seeds", help="Seeds of every setting: 0,1,2 or 0-4 (default: the file's 'sweep.seeds', else 0).")
@click.option("--random", "samples", type=click.IntRange(1), help="Random search: draw this many settings from the "
              "--sample spaces (crossed with the grid).")
@click.option("--sample", multiple=True, metavar="KEY=SPACE", help="A random-search space: a YAML list of choices, or "
              "{low: 0.001, high: 0.1, log: true} (repeatable).")
@click.option("--search-seed", type=click.IntRange(0), help="Seed of the random draws (default 0).")
@click.option("--metric", "metrics", multiple=True, help="Final metric to summarise (repeatable; default test_acc, "
              "test_loss).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True, help="Runs at a time, each in "
              "its own worker process.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The sweep folder (default: sweeps/<config name>); running the same sweep again resumes it.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Resume the sweep in this folder, as recorded in its sweep.yaml.")
@strict_option
@handle_errors
def sweep(config: Path | None, overrides: tuple[str, ...], grid: tuple[str, ...], seeds: str | None,
          samples: int | None, sample: tuple[str, ...], search_seed: int | None, metrics: tuple[str, ...], jobs: int,
          out_dir: Path | None, resume_dir: Path | None, strict: bool | None) -> None:
    """Run CONFIG over a grid of settings and seeds (or a sweep file's 'sweep:' section) and summarise
    each setting over its seeds: mean, standard deviation and 95% confidence interval."""
    from flcore.sweep import SWEEP_FILE, run_sweep, sweep_from_options

    if resume_dir is not None:
        if config or overrides or grid or seeds or samples or sample or search_seed is not None or out_dir:
            raise click.UsageError("--resume takes the sweep from its folder; give only -j and --metric with it.")
        config, out_dir = resume_dir / SWEEP_FILE, resume_dir
    base, spec = sweep_from_options(config, overrides, grid, seeds, samples, sample, search_seed, metrics)
    run_sweep(base, spec, out_dir or Path("sweeps") / str(base.get("name", "sweep")), jobs, strict, click.echo)


@main.command()
@click.argument("grid", required=False, type=click.Path(dir_okay=False, path_type=Path))
@set_option
@click.option("--out", "out_dir", default="robustness", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the table, figure and runs.")
@click.option("--attack", "attacks", multiple=True, help="Only this attack label of the grid (repeatable).")
@click.option("--defense", "defenses", multiple=True, help="Only this defense label of the grid (repeatable).")
@click.option("--share", "shares", multiple=True, type=float, help="Malicious shares instead of the grid's (repeatable).")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seeds instead of the grid's (repeatable).")
@click.option("--plot/--no-plot", default=True, help="Also draw table.png (needs matplotlib).")
@handle_errors
def robustness(grid: Path | None, overrides: tuple[str, ...], out_dir: Path, attacks: tuple[str, ...],
               defenses: tuple[str, ...], shares: tuple[float, ...], seeds: tuple[int, ...], plot: bool) -> None:
    """Attacks by defenses from one GRID file (the embedded digits grid without it), same seeds and
    data in every cell: a markdown and CSV table of final accuracy and attack success, and a figure.
    --set changes the grid's experiment. Run it again to resume: finished cells are read back."""
    from flcore.config import apply_overrides
    from flcore.robustness import load_grid, run_grid, select

    spec, base = load_grid(grid)
    paths = run_grid(select(spec, attacks, defenses, shares, seeds), apply_overrides(base, overrides), out_dir, plot)
    click.echo("table: " + ", ".join(str(p) for p in paths.values()))




def _resumable_config(resume_dir: Path, config: Path | None, overrides: tuple[str, ...]) -> Any:
    """The run's saved config with the few overrides a resume accepts (the engine writes it back to
    config.yaml only once the checkpoint passed its checks)."""
    from flcore.config import RESUMABLE_FIELDS, apply_overrides, read_config_file, validate_config
    from flcore.errors import ConfigError

    refused = [o for o in overrides if o.partition("=")[0].strip() not in RESUMABLE_FIELDS]
    if config is not None or refused:
        raise ConfigError(
            "--resume continues a run with the config saved in its folder; give no CONFIG, and --set only "
            f"{', '.join(RESUMABLE_FIELDS)} (got {', '.join(refused) or config})."
        )
    saved = resume_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {resume_dir}: no config.yaml there; is it a flcore run folder?")
    return validate_config(apply_overrides(read_config_file(saved), overrides), str(saved))


def _model_counts(registry: Any, component: Any, dataset: str, mode: str | None, pairs: tuple[str, ...]) -> dict:
    """Build the model for a dataset's inputs (without loading the dataset when it can say its shape)."""
    from flcore.config import apply_overrides
    from flcore.resolve import validate_params

    data_component = registry.resolve("dataset", dataset)
    data_params = validate_params(data_component, {}, "dataset")
    target = data_component.load()
    spec = target.describe_spec(data_params) if hasattr(target, "describe_spec") else target(data_params).spec
    raw = apply_overrides({}, pairs)
    if mode is not None:
        raw["mode"] = mode
        if mode != "scratch" and "weights" in component.params_model().model_fields:
            raw.setdefault("weights", "none")  # counts do not depend on the weights' values
    model = component.load()(validate_params(component, raw, "model"), spec)
    return model.parameter_counts()


def _experiment(config: Any, strict: bool | None) -> Any:
    from flcore.experiment import Experiment
    from flcore.registry import discover

    return Experiment(config, registry=discover(strict=strict))


def _report(result: Any) -> None:
    if result.rank != 0:  # the distributed backend's other processes stay quiet
        return
    final = result.final.get("final", {})
    counts = result.final.get("parameters")
    if counts:
        click.echo(f"parameters: trainable {counts['trainable']:,}, frozen {counts['frozen']:,}, total {counts['total']:,}")
    shown = ", ".join(f"{k}={final[k]:.4f}" for k in ("test_acc", "test_loss") if k in final)
    click.echo(f"results: {result.run_dir}" + (f" ({shown})" if shown else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
