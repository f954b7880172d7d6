"""What a finished run hands back to its caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """What a finished run produced: its folder, one row per round (or epoch), the summary, and the
    final model's state dict."""

    run_dir: Path
    history: list[dict[str, Any]]
    final: dict[str, Any]
    state_dict: dict[str, Any] = field(repr=False, default_factory=dict)
    rank: int = 0  # the process's rank under a multi-process backend; only rank 0 writes
