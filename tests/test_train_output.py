"""`flcore train` prints flcore's lines, not Lightning's banners and tips."""

from __future__ import annotations

import subprocess
import sys

import yaml

LIGHTNING_CHATTER = ("GPU available", "TPU available", "Tip:", "litlogger", "litmodels", "`Trainer.fit` stopped",
                     "LeafSpec", "LOCAL_RANK", "Epoch 0")


def test_flcore_train_prints_no_lightning_banners_or_tips(tmp_path, tiny_config):
    """In a fresh process, as a user runs it: Lightning configures its console logging at import."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config | {"federation": None}))
    result = subprocess.run(
        [sys.executable, "-m", "flcore.cli", "train", str(config), "--out", str(tmp_path / "runs"),
         "--set", "training.epochs=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("parameters:") and lines[1].startswith("results:"), lines
    assert [chatter for chatter in LIGHTNING_CHATTER if chatter in result.stdout + result.stderr] == [], result.stderr
