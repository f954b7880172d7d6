"""`flcore report` renders every plot as a real PNG and links them from one HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from flcore.cli import main
from flcore.config import validate_config
from flcore.experiment import Experiment


def assert_png_with_content(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 150
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20, f"{path.name} looks blank"


def test_report_of_one_run(tmp_path, tiny_config):
    tiny_config["logging"]["profiler"] = "simple"
    run = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path).run_dir
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    out = run / "report"
    expected = {"global.png", "agents.png", "sampling.png", "memory.png", "partition.png"}
    assert expected <= {p.name for p in out.glob("*.png")}
    for name in expected:
        assert_png_with_content(out / name)
    page = (out / "index.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', page)) == expected
    assert "Profiler (Table 4)" in page and "local_train" in page
    assert "fedavg" in page and "flcore" in page  # config and plugin versions


def test_report_overlays_several_runs(tmp_path, tiny_config):
    runs = []
    for partitioner in ("iid", {"name": "niid", "niid_factor": 1}):
        tiny_config["federation"]["partitioner"] = partitioner
        runs.append(str(Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "runs").run_dir))
    result = CliRunner().invoke(main, ["report", *runs, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert_png_with_content(tmp_path / "cmp" / "global.png")
    assert '<img src="global.png"' in (tmp_path / "cmp" / "index.html").read_text()


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a flcore run folder" in result.output


def test_the_report_page_shows_its_plots_in_headless_chromium(tmp_path, tiny_config):
    """Rendered by a real browser, the page shows the plots: matplotlib's blue lines and bars appear
    in the screenshot, which they cannot unless the PNGs load."""
    import shutil
    import subprocess

    import pytest

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium when it can)")
    run = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path).run_dir
    page = CliRunner().invoke(main, ["report", str(run)]).output.split("report: ")[1].strip()
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2400",
                    f"--screenshot={shot}", f"file://{page}"], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    tab_blue = np.abs(pixels - [31, 119, 180]).sum(axis=1) < 30
    assert tab_blue.sum() > 500, "the plots did not render"


# ---------------------------------------------------------------------------------------------------
# What each figure shows, checked on the matplotlib objects; and run folders as untrusted input.

import shutil  # noqa: E402

import pytest  # noqa: E402

from flcore import plots  # noqa: E402
from flcore.engine.rundir import read_csv  # noqa: E402
from flcore.report import read_run  # noqa: E402


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from flcore.testing import tiny_config

    config = tiny_config(rounds=4) | {"seed": 3}
    config["logging"]["profiler"] = "simple"
    return Experiment(validate_config(config)).run(out_dir=tmp_path_factory.mktemp("runs")).run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run, for tests that damage it."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _whole_numbers(values):
    return np.allclose(values, np.round(values))


def test_the_global_figure_has_a_legend_honest_ranges_and_round_ticks(finished_run):
    record = read_run(finished_run)
    fig = plots.global_figure([record.history.curve("mine")])
    acc_ax, loss_ax = fig.axes
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["mine"]
    assert "mine test" in [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert acc_ax.get_ylim() == (0, 1) and loss_ax.get_ylim()[0] == 0
    rows = read_csv(finished_run / "metrics.csv")
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [float(r["test_acc"]) for r in rows])
    assert loss_ax.get_ylim()[1] >= max(float(r["test_loss"]) for r in rows)
    for ax in (acc_ax, loss_ax):
        assert _whole_numbers(ax.get_xticks()), ax.get_xticks()


def test_the_agents_figure_shows_the_three_most_selected_agents(finished_run):
    a = read_run(finished_run).agents
    fig = plots.agents_figure(a["agent"], a["round"], a["epoch"], a["loss"], a["acc"])
    counts = np.bincount(a["agent"])
    expected = [f"agent {k}" for k in np.argsort(-counts, kind="stable")[:3]]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
        assert _whole_numbers(ax.get_xticks())
    assert fig.axes[1].get_ylim() == (0, 1)


def test_the_sampling_figure_labels_agents_with_whole_numbers_only():
    times = np.array([3, 0, 5, 1, 2, 2, 4, 0, 1, 6, 2])  # 11 agents: matplotlib's default ticks would be 2.5, 7.5
    fig = plots.sampling_figure(times)
    ax = fig.axes[0]
    assert _whole_numbers(ax.get_xticks()) and _whole_numbers(ax.get_yticks())
    assert [bar.get_height() for bar in ax.patches] == times.tolist()
    assert ax.get_xlim() == (-0.5, 10.5) and ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 6
    assert "9 of 11 agents ever selected" in ax.get_title()


def test_the_memory_figure_starts_at_zero_so_a_small_change_looks_small():
    step = np.arange(1, 11)
    rss = np.linspace(400.0, 401.0, 10)  # 1 MiB of growth on 400: flat, not a steep climb
    fig = plots.memory_figure(step, {"peak_rss_mib": rss})
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low == 0 and high >= 401
    assert (rss.max() - rss.min()) / (high - low) < 0.01
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["peak_rss_mib"]
    assert _whole_numbers(ax.get_xticks())


def test_the_partition_figure_has_a_legend_of_labels_and_stacks_every_sample(finished_run):
    counts = read_run(finished_run).label_counts
    fig = plots.partition_figure(counts)
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None and legend.get_title().get_text() == "label"
    assert [t.get_text() for t in legend.get_texts()] == [str(k) for k in range(counts.shape[1])]
    tops = {}
    for bar in ax.patches:
        x = round(bar.get_x() + bar.get_width() / 2)
        tops[x] = max(tops.get(x, 0), bar.get_y() + bar.get_height())
    assert [tops[k] for k in range(len(counts))] == counts.sum(axis=1).tolist()
    assert _whole_numbers(ax.get_xticks()) and ax.get_ylim()[0] == 0


def test_the_partition_figure_of_many_classes_has_a_colour_bar_instead():
    counts = np.random.default_rng(0).integers(0, 5, size=(6, 30))
    fig = plots.partition_figure(counts)
    assert fig.axes[0].get_legend() is None
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "label"


def test_a_symlinked_report_folder_is_refused_and_nothing_is_written_through_it(run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_copy / "report").symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_figure_in_the_report_folder_is_replaced_not_written_through(run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run_copy / "report").mkdir()
    (run_copy / "report" / "global.png").symlink_to(victim)
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    assert not (run_copy / "report" / "global.png").is_symlink()
    assert_png_with_content(run_copy / "report" / "global.png")


@pytest.mark.parametrize("name", ["config.yaml", "profile.txt", "summary.json", "plugins.json", "partition.json",
                                  "metrics.csv", "sampling.csv", "logs/agents", "logs/agents/version_0"])
def test_a_symlink_inside_a_run_folder_is_never_followed(run_copy, tmp_path, name):
    secret = tmp_path / "secret"
    if name.startswith("logs/agents"):
        shutil.copytree(run_copy / name, secret)
    else:
        secret.write_bytes((run_copy / name).read_bytes().replace(b"tiny", b"SECRET-tiny"))
    target = run_copy / name
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.symlink_to(secret)
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and name.split("/")[-1] in result.output
    assert "Traceback" not in result.output
    assert not (run_copy / "report" / "index.html").exists()


@pytest.mark.parametrize(("name", "content", "says"), [
    ("partition.json", b'{"label_counts": [[1, 2], [3', "partition.json' is not valid JSON"),
    ("partition.json", b'{"label_counts": [[1, 2], [3, -4]]}', "label_counts.1.1' = -4"),
    ("partition.json", b'{"label_counts": [[1, 2], [3]]}', "one count per label"),
    ("summary.json", b'{"final": ', "summary.json' is not valid JSON"),
    ("summary.json", b'[1, 2]', "summary.json"),
    ("plugins.json", b'{"distributions": {"flcore": ["0.1"]}}', "distributions.flcore"),
    ("metrics.csv", b"round,test_acc\n1,0.5\n2,lots\n", "line 3: column 'test_acc' = 'lots' is not a number"),
    ("metrics.csv", b"round,test_acc\n1,0.5,9\n", "line 2: more fields than the header"),
    ("metrics.csv", b"test_acc\n0.5\n", "lacks the column 'round'"),
    ("sampling.csv", b"agent,times_selected\n0,2.5\n", "'times_selected' = '2.5' is not a whole number"),
    ("profile.txt", b"\xff\xfe profile", "profile.txt' is not UTF-8 text"),
    ("logs/agents/version_0/metrics.csv", b"agent,round,epoch,loss\n0,0,0,1.0\n", "lacks the column(s) acc"),
])
def test_a_malformed_file_is_one_clear_error_naming_it(run_copy, name, content, says):
    (run_copy / name).write_bytes(content)
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 2, result.output
    assert says in result.output and name in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (run_copy / "report").exists()  # checked before anything is written


def test_a_fifo_in_a_run_folder_does_not_hang_the_report(run_copy):
    import os

    (run_copy / "profile.txt").unlink()
    os.mkfifo(run_copy / "profile.txt")
    result = CliRunner().invoke(main, ["report", str(run_copy)])
    assert result.exit_code == 2 and "not a regular file" in result.output, result.output
