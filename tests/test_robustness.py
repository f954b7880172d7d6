"""`flcore robustness`: a grid file becomes cells with the same seeds and data, the table holds what
each cell's run recorded, finished cells are read back and stopped ones resumed, bad grids exit 2."""

from __future__ import annotations

import csv
import io

import pytest
import yaml
from click.testing import CliRunner

from flcore.cli import main
from flcore.config import apply_overrides, validate_config
from flcore.engine.rundir import read_csv
from flcore.robustness import Grid, expand, load_grid


def grid_file(tmp_path, tiny_config, **changes):
    tiny_config["federation"].update(rounds=2, sampler="all")
    grid = {"experiment": tiny_config, "seeds": [5], "shares": [0.25],
            "attacks": {"none": None, "flip": {"name": "sign_flip", "scale": 4}},
            "defenses": {"fedavg": {"aggregator": "fedavg"},
                         "krum": {"aggregator": {"name": "krum", "byzantine": "$f"}}}} | changes
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["robustness", *args])


def test_cells_share_the_seed_and_data_and_substitute_f_and_share(tmp_path, tiny_config):
    grid, base = load_grid(grid_file(tmp_path, tiny_config, seeds=[5, 6], shares=[0.25, 0.5]))
    cells = expand(grid, base, cohort=8)
    assert len(cells) == 2 * 2 * 2 * 2
    configs = {(c.attack, c.defense, c.share, c.seed): validate_config(apply_overrides(base, c.overrides)) for c in cells}
    krum = configs[("flip", "krum", 0.5, 6)]
    assert krum.seed == 6 and krum.federation.aggregator.params == {"byzantine": 4}  # round(0.5 * 8)
    assert [(p.name, p.params) for p in krum.federation.agent_plugins] == [("sign_flip", {"scale": 4, "share": 0.5})]
    plain = configs[("none", "fedavg", 0.25, 5)]
    assert plain.federation.agent_plugins == []
    for config in configs.values():  # everything but the cell's own choices is the base experiment
        assert (config.dataset, config.model, config.training, config.federation.partitioner) == (
            plain.dataset, plain.model, plain.training, plain.federation.partitioner)


def test_the_table_holds_each_cells_recorded_results_and_a_rerun_reads_them_back(tmp_path, tiny_config):
    grid = grid_file(tmp_path, tiny_config)
    out = tmp_path / "out"
    result = invoke(str(grid), "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [(r["attack"], r["defense"]) for r in rows] == [("none", "fedavg"), ("none", "krum"), ("flip", "fedavg"),
                                                           ("flip", "krum")]
    for row in rows:
        run_dir = out / row["runs"]
        metrics = read_csv(run_dir / "metrics.csv")
        assert float(row["test_acc"]) == pytest.approx(float(metrics[-1]["test_acc"]), abs=5e-5)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == 5
        if row["defense"] == "krum":
            assert config["federation"]["aggregator"]["byzantine"] == 2  # $f: round(0.25 * 8)
            kept = [float(m["sign_flip/malicious_kept"]) for m in metrics] if row["attack"] == "flip" else []
            assert row["malicious_kept"] == ("" if not kept else f"{sum(kept) / len(kept):.4f}")
    markdown = (out / "table.md").read_text()
    assert "| attack \\ defense | fedavg | krum |" in markdown and f"| flip | {float(rows[2]['test_acc']):.3f} |" in markdown
    assert (out / "table.png").stat().st_size > 0
    folders, table = sorted(p.name for p in (out / "runs").glob("*/*")), (out / "table.csv").read_text()
    again = invoke(str(grid), "--out", str(out))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (out / "runs").glob("*/*")) == folders, "finished cells are not run again"
    assert (out / "table.csv").read_text() == table


def test_a_stopped_cell_is_resumed_in_its_folder(tmp_path, tiny_config):
    from flcore.experiment import Experiment
    from flcore.robustness import run_cell

    grid, base = load_grid(grid_file(tmp_path, tiny_config))
    cell = expand(grid, base, cohort=8)[2]  # flip x fedavg
    runs = tmp_path / "runs"
    config = validate_config(apply_overrides(base, cell.overrides))
    stopped = Experiment(config).run(out_dir=runs / cell.name, stop_after_rounds=1, progress="off")
    straight = Experiment(config).run(out_dir=tmp_path / "straight", progress="off")
    from flcore.registry import discover

    finished = run_cell(cell, base, runs, discover())
    assert finished.run_dir == stopped.run_dir and len(finished.history) == 2
    assert finished.final("test_acc") == straight.history[-1]["test_acc"]


def test_selecting_labels_shares_and_seeds_narrows_the_grid(tmp_path, tiny_config):
    out = tmp_path / "out"
    result = invoke(str(grid_file(tmp_path, tiny_config)), "--out", str(out), "--attack", "flip", "--defense", "krum",
                    "--share", "0.125", "--no-plot")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [(r["attack"], r["defense"], r["share"]) for r in rows] == [("flip", "krum", "0.125")]
    assert not (out / "table.png").exists()


@pytest.mark.parametrize("change,message", [
    ({"attack": {}}, r"'attack' is not a known field"),
    ({"shares": [1.5]}, r"'shares' = \[1.5\]: Value error, every share must be in \(0, 1\]"),
    ({"defenses": {"krum": {"aggregator": {"name": "krum", "byzantine": -1}}}},
     r"'federation.aggregator.byzantine' = -1"),
    ({"attacks": {"typo": {"name": "sign_flipp"}}}, r"unknown agent_plugin 'sign_flipp'"),
    ({"shares": [0.25, 0.5]}, r"cell none-krum-share0.5-seed5: federation.aggregator 'krum' cannot be used here: "
                              r"'byzantine' = 4 is too large"),
])
def test_a_bad_grid_exits_2_before_any_run(tmp_path, tiny_config, change, message):
    out = tmp_path / "out"
    result = invoke(str(grid_file(tmp_path, tiny_config, **change)), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert __import__("re").search(message, result.output), result.output
    assert not (out / "runs").exists()


def test_an_unknown_label_names_the_grids_labels(tmp_path, tiny_config):
    result = invoke(str(grid_file(tmp_path, tiny_config)), "--defense", "bulyan")
    assert result.exit_code == 2 and "--defense bulyan: the grid has no such defense; it has fedavg, krum" in result.output


def test_the_default_grid_is_the_documented_one():
    """docs/robustness.md's table comes from this grid: digits, 20 agents, 20% malicious."""
    grid, base = load_grid()
    assert isinstance(grid, Grid) and grid.shares == [0.2] and base["dataset"]["name"] == "digits"
    assert base["federation"]["agents"] == 20
    assert {"none", "sign_flip", "scaling", "alie", "ipm", "backdoor", "label_flip", "gaussian_noise"} <= set(grid.attacks)
    assert {"fedavg", "median", "trimmed_mean", "krum", "bulyan", "centered_clipping", "norm_bound",
            "fltrust"} <= set(grid.defenses)


def test_the_experiment_may_be_a_config_file_beside_the_grid(tmp_path, tiny_config):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config))
    grid, base = load_grid(grid_file(tmp_path, tiny_config, experiment="base.yaml"))
    assert base["model"] == {"name": "mlp", "hidden": [32]} and base["federation"]["agents"] == 8
    missing = invoke(str(grid_file(tmp_path, tiny_config, experiment="nowhere.yaml")))
    assert missing.exit_code == 2 and "nowhere.yaml' does not exist" in missing.output
