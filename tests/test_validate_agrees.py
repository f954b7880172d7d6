"""`flcore validate` and `flcore run` agree on generated configs: both exit 2, or both exit 0.

Hypothesis mutates a few fields of the tiny config (one round on the embedded digits) with valid and
invalid values, and runs both commands in-process. The values are chosen so that a valid config
trains without diverging in one round, and so that no component can reject the data: those cases
need the dataset built, which only `run` does, and are pinned below as expected failures.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flcore.cli import main
from flcore.testing import tiny_config

BASE = tiny_config(rounds=1, agents=6, sampler={"name": "uniform", "count": 3})
BASE["logging"]["agent_metrics"] = False

anything_wrong = st.sampled_from([True, "many", -1, None, [1], {"x": 1}])
small_int = st.integers(-1, 3)

MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["fuzz-1", "a.b_c", "../up", "/abs", "a b", "", "x" * 220]),
    "seed": st.one_of(st.integers(-2, 3), st.just(2**70), st.booleans()),
    "federation.agents": st.one_of(st.integers(-1, 9), st.booleans(), st.just(2.5)),
    "federation.rounds": st.one_of(st.integers(-1, 2), st.booleans()),
    "federation.sampler": st.one_of(
        st.sampled_from(["all", "uniform", "weighted", "round_robin", "everyone"]),
        st.fixed_dictionaries({"name": st.just("uniform"), "count": st.one_of(st.integers(-1, 12), st.booleans())}),
        st.fixed_dictionaries({"name": st.just("weighted"), "fraction": st.floats(-0.5, 1.5)}),
    ),
    "federation.partitioner": st.one_of(
        st.sampled_from(["iid", "quantity_skew", "niid", "natural-ish"]),
        st.fixed_dictionaries({"name": st.just("k_classes"), "k": st.integers(-1, 10)}),
        st.fixed_dictionaries({"name": st.just("dirichlet"), "alpha": st.sampled_from([-1.0, 0.0, 1.0, 5.0])}),
        st.fixed_dictionaries({"name": st.just("quantity_skew"), "sigma": st.sampled_from([-1.0, 0.0, 0.5])}),
    ),
    "federation.aggregator": st.one_of(
        st.sampled_from(["fedavg", "fedprox", "fedavgm", "fedmedian", "fedavg2"]),
        st.fixed_dictionaries({"name": st.just("fedadam"), "beta1": st.floats(-0.5, 1.5)}),
        st.fixed_dictionaries({"name": st.just("fedavg"), "server_lr": st.sampled_from([-1.0, 0.0, 0.5, math.inf])}),
        st.fixed_dictionaries({"name": st.just("fedavg"), "weighted": st.sampled_from([False, "sometimes"])}),
    ),
    "federation.backend": st.sampled_from(["sequential", "vectorized", "parallel"]),
    "federation.on_agent_failure": st.sampled_from(["fail", "skip", "ignore"]),
    "federation.buffers": st.sampled_from(["weighted_mean", "global", "median"]),
    "model": st.one_of(
        st.sampled_from(["logistic", "mlp", "perceptron"]),
        st.fixed_dictionaries({"name": st.just("mlp"), "hidden": st.one_of(
            st.lists(st.integers(-2, 16), max_size=2), st.just([True]), st.just("wide"))}),
        st.fixed_dictionaries({"name": st.just("mlp"), "dropout": st.floats(-0.5, 1.5)}),
        st.fixed_dictionaries({"name": st.just("cnn"), "channels": st.lists(st.integers(-1, 4), min_size=1, max_size=3),
                               "kernel_size": st.integers(-1, 3), "hidden": st.integers(-1, 8)}),
    ),
    "training.epochs": st.one_of(small_int, st.booleans()),
    "training.max_steps": st.one_of(st.none(), small_int),
    "training.batch_size": st.one_of(st.none(), st.integers(-1, 64), st.booleans()),
    "training.optimizer": st.fixed_dictionaries({
        "name": st.sampled_from(["sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"]),
        "lr": st.sampled_from([-0.1, 0.0, 0.001, 0.02, math.inf, math.nan, True]),
    }, optional={
        "momentum": st.sampled_from([-0.5, 0.0, 0.5, 1.0]),
        "betas": st.lists(st.sampled_from([-0.5, 0.0, 0.9, 1.0, 1.5]), min_size=1, max_size=3),
        "weight_decay": st.sampled_from([-1.0, 0.0, 1e-4]),
        "nesterov": st.booleans(),
    }),
    "training.scheduler": st.fixed_dictionaries({
        "name": st.sampled_from(["constant", "step", "multistep", "exponential", "cosine", "linear"]),
    }, optional={
        "gamma": st.sampled_from([-0.5, 0.0, 0.5, 1.0, 1.5]),
        "step_size": small_int,
        "milestones": st.lists(st.integers(-2, 3), max_size=2),
        "min_factor": st.sampled_from([-0.1, 0.0, 0.5, 1.1]),
    }),
    "training.loss": st.sampled_from(["cross_entropy", "nll", "mse"]),
    "training.label_smoothing": st.sampled_from([-0.1, 0.0, 0.1, 1.0]),
    "training.grad_clip_norm": st.sampled_from([None, -1.0, 0.0, 1.0, math.inf]),
    "evaluation.every": st.one_of(small_int, st.booleans()),
    "evaluation.batch_size": st.sampled_from([-1, 0, 1, 4096, True]),
    "evaluation.local": st.sampled_from([True, False, "maybe"]),
    "runtime.accelerator": st.sampled_from(["cpu", "auto", "tpu"]),
    "runtime.devices": st.sampled_from([0, 1, 2, -1, "auto", "1", "2", "0,1", "x", True, 1.5]),
    "runtime.num_nodes": st.one_of(small_int, st.booleans()),
    "runtime.precision": st.sampled_from(
        ["32-true", "32", 32, "bf16-mixed", "16-mixed", "bf16", "17-mixed", "transformer-engine", True]),
    "runtime.matmul_precision": st.sampled_from([None, "high", "low"]),
    "logging.loggers": st.sampled_from([
        [], ["csv"], ["tensorbored"], [{"name": "csv", "version": "v"}], [{"name": "csv", "flush": 5}],
        [{"name": "csv", "save_dir": "/tmp/flcore-fuzz-escape"}], [{"name": "csv", "flush_logs_every_n_steps": "x"}],
        [{"name": "tensorboard", "version": "tb"}], [{"name": "tensorboard", "flushsecs": 1}],
        [{"name": "tensorboard", "log_dir": "x"}], [{"name": "mlflow", "tracking_uri": "file:/tmp/mlruns"}],
        "csv",
    ]),
    "logging.profiler": st.sampled_from([None, "simple", "advanced", "pyinstrument"]),
    "logging.progress": st.sampled_from(["auto", "off", "maybe"]),
    "logging.agent_metrics": st.sampled_from([True, False, "yes please"]),
    "checkpoint.every": st.one_of(small_int, st.booleans()),
    "dataset": st.one_of(
        st.sampled_from(["digits", "digitz"]),
        st.fixed_dictionaries({"name": st.just("digits"), "test_fraction": st.sampled_from([-0.1, 0.0, 0.3, 1.0])}),
    ),
    "federation.roundz": st.just(3),
}


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=2, unique=True)):
        _set(config, key, draw(MUTATIONS[key]))
    return config


def _validate_and_run(config: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    """Both commands' results, and what run wrote: the paths under the folder that holds the config
    and ``--out`` (``<folder>/out/runs``), relative to it."""
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        checked = runner.invoke(main, ["validate", str(path)])
        ran = runner.invoke(main, ["run", str(path), "--out", str(Path(folder) / "out" / "runs")])
        written = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p != path)
    return checked, ran, written


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_validate_and_run_agree(config):
    checked, ran, written = _validate_and_run(config)
    assert checked.exit_code in (0, 2), checked.output
    assert ran.exit_code == checked.exit_code, (
        f"validate exited {checked.exit_code}, run {ran.exit_code}\nvalidate: {checked.output}\nrun: {ran.output}")
    if checked.exit_code == 2:
        assert "Traceback" not in checked.output and checked.output.startswith("error: ")
        assert all(w in ("out", "out/runs") for w in written), f"a rejected run wrote {written}"
    else:  # a model with finite results, and everything it wrote in its one run folder under --out
        results = re.findall(r"test_(?:acc|loss)=(\S+?)[,)]", ran.output)
        assert results and all(math.isfinite(float(v)) for v in results), ran.output
        run_folders = {Path(w).parts[2] for w in written if len(Path(w).parts) > 2}
        assert len(run_folders) == 1 and all(w == "out" or w.startswith("out/runs") for w in written), written


# Rejections that need the dataset, model or partition built, which validate does not do. The engine
# (or `flcore validate` building more) would have to catch them; each stays here until it does.
# validate builds the data, model, partition and backend as run does (Experiment.check), so it sees these
BUILT_BY_VALIDATE = {
    "the model rejects the data's shape": {"model": "lenet5"},
    "the partitioner cannot give every agent a sample": {"federation": {"agents": 2000}},
    "the partitioner needs more classes than the data has": {
        "federation": {"partitioner": {"name": "k_classes", "k": 11}}},
    "krum needs more sampled updates than byzantine + 2": {
        "federation": {"aggregator": {"name": "krum", "byzantine": 5}}},
}

# the vectorized backend trains in the configured precision (it once ignored it and failed in round 1)
RUN_BY_BOTH = {
    "the vectorized backend in half precision": {
        "federation": {"backend": "vectorized"}, "runtime": {"precision": "16-true"}},
    "the vectorized backend in double precision": {
        "federation": {"backend": "vectorized"}, "runtime": {"precision": "64-true"}},
}


def _with(changes: dict) -> dict:
    config = copy.deepcopy(BASE)
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section].update(value)
        else:
            config[section] = value
    return config


@pytest.mark.parametrize("case", sorted(BUILT_BY_VALIDATE))
def test_validate_builds_what_run_builds_before_training(case):
    checked, ran, _ = _validate_and_run(_with(BUILT_BY_VALIDATE[case]))
    assert ran.exit_code == 2 and checked.exit_code == 2, f"validate {checked.exit_code}, run {ran.exit_code}"


@pytest.mark.parametrize("case", sorted(RUN_BY_BOTH))
def test_validate_and_run_both_accept(case):
    checked, ran, _ = _validate_and_run(_with(RUN_BY_BOTH[case]))
    assert checked.exit_code == ran.exit_code == 0, f"validate {checked.exit_code}, run {ran.exit_code}: {ran.output}"
