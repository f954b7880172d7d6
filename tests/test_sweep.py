"""`flcore sweep`: the plan, the summary over seeds, resuming (after a real SIGKILL), and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from flcore.cli import main
from flcore.engine.rundir import read_csv
from flcore.sweep import RandomSearch, Range, SweepSpec, _draw, plan, run_state, run_sweep
from flcore.sweep_summary import read_sweep
from flcore.testing import tiny_config

#: Student's t quantile t(0.975, df=2), from any table: the 95% interval of a mean over 3 seeds
T_975_DF2 = 4.302652729911275


def _base(rounds: int = 2) -> dict:
    return tiny_config(rounds=rounds)


def _sweep_file(tmp_path: Path, rounds: int = 2, seeds=(0, 1, 2)) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_base(rounds) | {"sweep": {
        "grid": {"federation.aggregator": ["fedavg", {"name": "fedavgm", "momentum": 0.5}]},
        "seeds": list(seeds)}}))
    return path


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def _run_folder(sweep: Path, key: str) -> Path:
    (found,) = [p for p in (sweep / "runs" / key).iterdir() if p.is_dir()]
    return found


def test_the_plan_crosses_grid_and_seeds_with_keys_that_name_setting_and_seed():
    spec = SweepSpec(grid={"federation.aggregator": ["fedavg", "fedprox"], "training.optimizer.lr": [0.1, 0.01]},
                     seeds=[0, 1, 2])
    runs = plan(_base(), spec)
    assert len(runs) == 12 and len({r.key for r in runs}) == 12
    assert [r.key for r in runs] == [r.key for r in plan(_base(), spec)]  # deterministic
    assert runs[0].key.startswith("aggregator-fedavg_lr-0.1-") and runs[0].key.endswith("-seed0")
    by_setting = {}
    for r in runs:
        assert r.config["seed"] == r.seed
        assert r.config["federation"]["aggregator"]["name"] == r.setting["federation.aggregator"]
        assert r.config["training"]["optimizer"]["lr"] == r.setting["training.optimizer.lr"]
        assert r.config["logging"]["progress"] == "off"
        by_setting.setdefault(r.setting_id, []).append(r.seed)
    assert list(by_setting.values()) == [[0, 1, 2]] * 4
    # another base config is another run, even with the same setting; more seeds leave the settings alone
    other = plan(_base(rounds=3), spec)
    assert {r.key for r in other}.isdisjoint(r.key for r in runs)
    more = plan(_base(), spec.model_copy(update={"seeds": [0, 1, 2, 3]}))
    assert {r.key for r in runs} < {r.key for r in more}


def test_a_grid_value_may_be_a_whole_component_section():
    spec = SweepSpec(grid={"federation.aggregator": ["fedavg", {"name": "fedavgm", "momentum": 0.5}]})
    configs = [r.config["federation"]["aggregator"] for r in plan(_base(), spec)]
    assert configs == [{"name": "fedavg"}, {"name": "fedavgm", "momentum": 0.5}]


def test_random_search_is_seeded_and_stays_in_its_spaces():
    search = RandomSearch(samples=20, seed=4, params={
        "training.optimizer.lr": Range(low=1e-3, high=1e-1, log=True),
        "training.epochs": Range(low=1, high=3, integer=True),
        "federation.aggregator": ["fedavg", "fedprox"]})
    draws = _draw(search)
    assert draws == _draw(search) and draws != _draw(search.model_copy(update={"seed": 5}))
    lrs = np.array([d["training.optimizer.lr"] for d in draws])
    assert ((lrs >= 1e-3) & (lrs <= 1e-1)).all() and (lrs < 1e-2).any() and (lrs > 1e-2).any()
    assert {d["training.epochs"] for d in draws} <= {1, 2, 3}
    assert {d["federation.aggregator"] for d in draws} == {"fedavg", "fedprox"}
    choices = RandomSearch(samples=4, params={"a.b": [1, 2], "a.c": [3, 4]})
    assert sorted((d["a.b"], d["a.c"]) for d in _draw(choices)) == [(1, 3), (1, 4), (2, 3), (2, 4)]
    spec = SweepSpec(grid={"federation.aggregator": ["fedavg", "fedprox"]},
                     random=RandomSearch(samples=3, params={"training.optimizer.lr": Range(low=0.01, high=0.2)}))
    assert len(plan(_base(), spec)) == 6  # the grid crossed with the draws, one seed


def test_the_summary_is_the_mean_sd_and_t_interval_over_seeds_and_the_figure_shows_it(tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", str(_sweep_file(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 runs (2 settings x 3 seeds)" in result.output

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["setting"] for r in rows] == ["aggregator=fedavg", "aggregator=fedavgm(momentum=0.5)"]
    for row, runs in zip(rows, [plan(_base(), SweepSpec(grid={"federation.aggregator": [g]}, seeds=[0, 1, 2]))
                                for g in ("fedavg", {"name": "fedavgm", "momentum": 0.5})]):
        finals = [json.loads((_run_folder(out, r.key) / "summary.json").read_text())["final"] for r in runs]
        for metric in ("test_acc", "test_loss"):
            x = np.array([f[metric] for f in finals])
            half = T_975_DF2 * x.std(ddof=1) / math.sqrt(3)
            assert float(row[f"{metric}_mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row[f"{metric}_std"]) == pytest.approx(x.std(ddof=1), rel=1e-12)
            assert float(row[f"{metric}_ci95_low"]) == pytest.approx(x.mean() - half, rel=1e-9)
            assert float(row[f"{metric}_ci95_high"]) == pytest.approx(x.mean() + half, rel=1e-9)
        assert row["seeds"] == "3" and row["planned"] == "3"
    table = (out / "summary.md").read_text()
    assert table.count("| 3/3 |") == 2 and "95% confidence interval" in table

    # the overlay: one line per setting, the mean over seeds per round, a band, a legend
    assert (out / "report" / "global.png").is_file() and "global.png" in (out / "report" / "index.html").read_text()
    from flcore.plots import global_figure

    results = read_sweep(out)
    fig = global_figure(results.curves())
    acc_ax = fig.axes[0]
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [f"{r['setting']} (n=3)" for r in rows]
    first = plan(_base(), SweepSpec(grid={"federation.aggregator": ["fedavg"]}, seeds=[0, 1, 2]))
    per_round = np.mean([[float(r["test_acc"]) for r in read_csv(_run_folder(out, p.key) / "metrics.csv")]
                         for p in first], axis=0)
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), per_round, rtol=1e-12)
    assert len(acc_ax.collections) == 2  # the two confidence bands


def test_running_a_sweep_again_skips_finished_runs_and_resumes_or_restarts_the_others(tmp_path):
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    base = _base(rounds=3)
    spec = SweepSpec(grid={"federation.aggregator": ["fedavg", "fedavgm"]}, seeds=[0, 1])
    runs = plan(base, spec)
    out = tmp_path / "sweep"
    # run 0 finished; run 1 stopped after a round with its checkpoint; run 2 killed before any checkpoint
    Experiment(validate_config(runs[0].config)).run(out_dir=out / "runs" / runs[0].key)
    Experiment(validate_config(runs[1].config)).run(out_dir=out / "runs" / runs[1].key, stop_after_rounds=1)
    begun = out / "runs" / runs[2].key / "tiny-20260101-000000"
    begun.mkdir(parents=True)
    (begun / "config.yaml").write_text("half")
    finished_summary = _run_folder(out, runs[0].key) / "summary.json"
    before = finished_summary.stat().st_mtime_ns
    assert [run_state(out / "runs" / r.key, 3)[0] for r in runs] == ["finished", "checkpointed", "begun", "new"]

    run_sweep(base, spec, out, echo=lambda line: None)
    assert [run_state(out / "runs" / r.key, 3)[0] for r in runs] == ["finished"] * 4
    assert finished_summary.stat().st_mtime_ns == before
    assert [(e["run"], e["event"]) for e in _events(out) if e["event"] != "finish"] == [
        (runs[1].key, "resume"), (runs[2].key, "restart"), (runs[3].key, "start")]
    assert not begun.exists()
    # the resumed run ends where one that ran straight through ends
    straight = Experiment(validate_config(runs[1].config)).run(out_dir=tmp_path / "straight")
    resumed = torch.load(_run_folder(out, runs[1].key) / "model.pt", weights_only=True)
    assert all(torch.equal(resumed[k], v) for k, v in straight.state_dict.items())

    again = CliRunner().invoke(main, ["sweep", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert "4 finished, 0 to resume, 0 to run" in again.output and "[1/" not in again.output


@pytest.mark.parametrize(("args", "says"), [
    (["--grid", "federation.agregator=fedavg,fedprox"], "'federation.agregator' is not a known field"),
    (["--grid", "federation.aggregator=fedavg,fedmagic"], "fedmagic"),
    (["--grid", "seed=1,2"], "sweep the seed with 'seeds'"),
    (["--seeds", "3-1"], "--seeds '3-1'"),
    (["--grid", "federation.rounds"], "must look like 'dotted.key=[value1, value2]'"),
    (["--sample", "training.optimizer.lr={low: 0.1, high: 0.01}", "--random", "2"], "must be below high"),
])
def test_bad_sweep_options_are_one_clear_error_before_any_run(tmp_path, args, says):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_base()))
    result = CliRunner().invoke(main, ["sweep", str(config), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_an_unknown_key_in_a_sweep_section_names_it(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_base() | {"sweep": {"gird": {"federation.rounds": [1, 2]}}}))
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'sweep.gird' is not a known field" in result.output, result.output


def test_the_command_line_and_a_sweep_section_plan_the_same_runs(tmp_path):
    from flcore.sweep import sweep_from_options

    from_file = plan(*sweep_from_options(_sweep_file(tmp_path), (), (), None, None, (), None, ()))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(_base()))
    from_cli = plan(*sweep_from_options(plain, (), ["federation.aggregator=[fedavg, {name: fedavgm, momentum: 0.5}]"],
                                        "0-2", None, (), None, ()))
    assert [r.key for r in from_file] == [r.key for r in from_cli]


def _flcore(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flcore.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _rounds_done(run_folder: Path) -> int:
    try:
        return len(read_csv(run_folder / "metrics.csv"))
    except (FileNotFoundError, csv.Error):
        return 0


@pytest.mark.slow
def test_a_sweep_killed_midway_resumes_to_the_results_of_one_never_killed(tmp_path):
    """2 aggregators x 3 seeds on the embedded digits, two workers; SIGKILL to the sweep and its workers
    once one run has finished and another is half done; then resume."""
    rounds = 8
    sweep_file = _sweep_file(tmp_path, rounds=rounds)
    base, spec = yaml.safe_load(sweep_file.read_text()), None
    spec = SweepSpec.model_validate(base.pop("sweep"))
    runs = plan(base, spec)

    straight = tmp_path / "straight"
    run_sweep(base, spec, straight, jobs=2, echo=lambda line: None)

    killed = tmp_path / "killed"
    victim = _flcore("sweep", str(sweep_file), "--out", str(killed), "-j", "2")
    deadline = time.monotonic() + 240
    ready = False
    while time.monotonic() < deadline and victim.poll() is None and not ready:
        folders = [[p for p in (killed / "runs" / r.key).glob("*") if p.is_dir()] for r in runs]
        done = [f for f in folders if f and (f[0] / "summary.json").is_file()]
        halfway = [f for f in folders if f and not (f[0] / "summary.json").is_file()
                   and (f[0] / "checkpoint.pt").is_file() and 1 <= _rounds_done(f[0]) <= rounds - 4]
        ready = bool(done and halfway)
        time.sleep(0.005)
    assert ready and victim.poll() is None, "the sweep ended before it could be killed: " + str(victim.poll())
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()

    at_kill = {r.key: run_state(killed / "runs" / r.key, rounds) for r in runs}
    assert "checkpointed" in {s for s, _ in at_kill.values()} and "finished" in {s for s, _ in at_kill.values()}
    finished_before = {k: (p / "summary.json").read_bytes() for k, (s, p) in at_kill.items() if s == "finished"}
    events_before = len(_events(killed))

    result = CliRunner().invoke(main, ["sweep", "--resume", str(killed), "-j", "2"])
    assert result.exit_code == 0, result.output

    expected = {"checkpointed": "resume", "begun": "restart", "new": "start"}
    after = _events(killed)[events_before:]
    for key, (state, path) in at_kill.items():
        mine = [e["event"] for e in after if e["run"] == key]
        if state == "finished":
            assert mine == [] and (path / "summary.json").read_bytes() == finished_before[key]
        else:
            assert mine == [expected[state], "finish"], (key, state, mine)
        if state == "checkpointed":
            assert _run_folder(killed, key) == path  # continued in its folder, not started over
        # exactly once: one run folder per run, every round once
        assert [int(r["round"]) for r in read_csv(_run_folder(killed, key) / "metrics.csv")] == list(
            range(1, rounds + 1))

    assert (killed / "summary.csv").read_text() == (straight / "summary.csv").read_text()
    for run in runs:
        a = torch.load(_run_folder(straight, run.key) / "model.pt", weights_only=True)
        b = torch.load(_run_folder(killed, run.key) / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), run.key
    assert (killed / "report" / "global.png").is_file()
