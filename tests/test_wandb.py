"""The W&B logger in offline mode: per-round metrics, config, files and plugin provenance, read back
from the offline run's transaction log with W&B's own protobuf schema. Nothing leaves the machine."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from flcore.config import validate_config
from flcore.engine.rundir import read_csv
from flcore.experiment import Experiment

pytest.importorskip("wandb", reason="wandb is not installed (it is in the 'test' extra)")

BLOCK = 32 * 1024  # the transaction log is LevelDB's log format: 32 KiB blocks of checksummed records


def _records(path: Path) -> list:
    """Every Record in an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    records, pending, offset = [], b"", 7  # header: ':W&B', magic, version
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if kind == 0:
            break
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_holds_what_the_run_folder_holds(tmp_path, tiny_config, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tiny_config["logging"]["loggers"] = ["csv", {"name": "wandb", "offline": True, "project": "flcore-test"}]
    try:
        result = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path, progress=False)
    finally:
        if wandb.run is not None:
            wandb.run.finish()
    (offline,) = (result.run_dir / "logs" / "wandb").glob("offline-run-*")
    records = _records(next(offline.glob("run-*.wandb")))

    history = []
    config = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
    rows = read_csv(result.run_dir / "metrics.csv")
    rounds = [h for h in history if "test_acc" in h]
    assert [h["trainer/global_step"] for h in rounds] == [int(r["round"]) for r in rows]
    for column in ("train_loss", "test_loss", "test_acc", "agents_seen"):
        assert [h[column] for h in rounds] == [float(r[column]) for r in rows], column
    assert any(k.startswith("agent_") and k.endswith("/train_loss") for h in history for k in h)

    assert config["federation"]["rounds"] == 3 and config["seed"] == 3
    provenance = json.loads((result.run_dir / "plugins.json").read_text())
    assert config["flcore_provenance"] == provenance
    for name in ("config.yaml", "metrics.csv", "summary.json", "plugins.json", "partition.json", "sampling.csv"):
        assert (offline / "files" / name).read_bytes() == (result.run_dir / name).read_bytes(), name
