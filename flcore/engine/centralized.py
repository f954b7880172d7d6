"""Centralized training with a plain Lightning Trainer: the non-federated baseline.

Same datamodule, same model, same optimizer settings as the federated run, so that "FedAvg reaches
within k points of central training" compares like with like.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from flcore import seeding
from flcore.augment import augmentation
from flcore.config import ExperimentConfig, config_to_dict
from flcore.engine.assembly import build_data_and_model
from flcore.engine.checkpoint import save_torch
from flcore.engine.evaluation import evaluate
from flcore.engine.observers import build_loggers, build_profiler
from flcore.engine.result import RunResult
from flcore.engine.rundir import RunDirectory


def run_centralized(config: ExperimentConfig, components: dict[str, Any], provenance: dict[str, Any],
                    out_dir: str | Path, progress: bool | None) -> RunResult:
    """Fit the model on the whole training split and evaluate it on the test split every epoch."""
    import lightning as L

    started = time.perf_counter()
    data, model = build_data_and_model(config, components)
    model.configure_training(config.training)
    run_dir = RunDirectory.create(out_dir, config.name)  # only once the experiment can start
    run_dir.write_config(config_to_dict(config))
    run_dir.write_json("plugins.json", provenance)
    data.batch_size = config.training.batch_size or len(data.y_train)
    augment = augmentation(config.training.augment)
    if augment is not None:  # training batches only, from a stream of the seed
        data.augment = (augment, seeding.torch_generator(config.seed, seeding.TRAINING, 0, seeding.SERVER, 2))

    history: list[dict] = []

    class _History(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            metrics = evaluate(module, data.x_test, data.y_test, data.transform,
                               config.evaluation.batch_size, module.device)
            row = {"epoch": trainer.current_epoch + 1,
                   "train_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
                   "test_loss": metrics["loss"], "test_acc": metrics["acc"]}
            history.append(row)
            run_dir.write_csv("metrics.csv", history)
            for logger in trainer.loggers:
                logger.log_metrics({"test_loss": row["test_loss"], "test_acc": row["test_acc"]}, step=row["epoch"])

    # as the federated engine: a progress bar on a terminal, none in a batch job's log (unless asked)
    show = progress if progress is not None else (
        config.logging.progress == "on" or (config.logging.progress == "auto" and sys.stderr.isatty()))
    L.seed_everything(seeding.derive_seed(config.seed, seeding.TRAINING) % 2**32, verbose=False)
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=config.training.epochs,
            accelerator=config.runtime.accelerator,
            devices=config.runtime.devices,
            precision=config.runtime.precision,
            logger=build_loggers(config.logging.loggers, run_dir.logs, config.name) or False,
            profiler=build_profiler(config.logging.profiler, run_dir.path),
            callbacks=[_History()],
            enable_checkpointing=False,
            enable_progress_bar=bool(show),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            max_steps=config.training.max_steps or -1,
            default_root_dir=str(run_dir.path),
            log_every_n_steps=10,
        )
        trainer.fit(model, datamodule=data)
    save_torch(model.state_dict(), run_dir.path / "model.pt")
    summary = {
        "epochs_completed": trainer.current_epoch,
        "final": history[-1] if history else {},
        "best_test_acc": max((h["test_acc"] for h in history), default=None),
        "parameters": model.parameter_counts(),
        "seconds": time.perf_counter() - started,
    }
    run_dir.write_json("summary.json", summary)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return RunResult(run_dir.path, history, summary, state)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Without Lightning's banners and tips ("GPU available: ...", "💡 Tip: ...", "`Trainer.fit`
    stopped: ...", the GPUs' "LOCAL_RANK: ..." and Tensor Core advice): INFO messages of the
    ``lightning.pytorch`` and ``lightning.fabric`` loggers, raised to WARNING here as Lightning's docs
    on console logging show, and restored afterwards. Lightning's own use of a deprecated torch API
    (``LeafSpec``) is no warning a user can act on; every other still shows."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
