"""`flcore report` renders every plot as a real PNG and links them from one HTML page."""

from __future__ import annotations

import re

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
