"""flcore: plugin-based federated learning simulation on PyTorch and Lightning.

The public API is what docs/ documents. Importing ``flcore`` is cheap: torch and Lightning are
imported only by the modules that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flcore.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = ["Experiment", "hookimpl", "hookspec", "load_config", "__version__"]

if TYPE_CHECKING:
    from flcore.config import load_config
    from flcore.experiment import Experiment


def __getattr__(name: str) -> Any:
    if name == "Experiment":
        from flcore.experiment import Experiment

        return Experiment
    if name == "load_config":
        from flcore.config import load_config

        return load_config
    raise AttributeError(f"module 'flcore' has no attribute {name!r}")
