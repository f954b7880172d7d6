"""FedScale's device traces converted to flcore's CSV layouts (docs/heterogeneity.md), without
unpickling any object.

FedScale (Lai et al. 2022) ships two pickles (its docs, "Device Trace File Formats"):

- ``client_behave_trace``: ``{client_id: {"active": [t, ...], "inactive": [t, ...],
  "finish_time": T, "duration": ..., "model": ...}}``: client online from ``active[i]`` to
  ``inactive[i]``, the pattern repeating every ``finish_time`` seconds;
- ``client_device_capacity``: ``{client_id: {"computation": ms, "communication": kbit/s}}``:
  the milliseconds one sample's inference takes, and the bandwidth (FedScale counts
  ``bytes / 1024 * 8`` kbit, and training as 3 inferences: forward and backward).

A pickle can run any code while it loads. These files are read by :class:`PlainUnpickler`, whose
``find_class`` admits nothing: only the opcodes for dicts, lists, tuples, sets, numbers, strings,
bytes, booleans and None work, and a file that names any class or function fails with an error
naming it. (The dataset plugins carry their own restricted reader for CIFAR's files.)

Agents are the clients in sorted id order (agent 0 is the smallest id); the ``client`` column keeps
FedScale's id. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import math
import pickle
from pathlib import Path
from typing import Any, Callable

from flcore.errors import UserError
from flcore.plain_pickle import RefusedPickle, load_plain

#: FedScale's training cost: a forward and a backward pass take three inferences
TRAINING_PER_INFERENCE = 3.0
#: FedScale's kbit: bytes / 1024 * 8
BYTES_PER_KBIT = 1024 / 8


def load_plain_pickle(path: str | Path) -> Any:
    """The plain data in a pickle file, or a :class:`~flcore.errors.UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist (or is not a file).")
    try:
        return load_plain(path, arrays=False)
    except RefusedPickle as exc:
        raise UserError(f"'{path}' could not be read as a FedScale trace: it holds {exc}; only plain dicts, lists, "
                        "numbers and strings are read from a trace (nothing is ever executed).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, MemoryError, RecursionError) as exc:
        raise UserError(f"'{path}' could not be read as a FedScale trace: {exc}.") from None


def convert_behaviour(source: str | Path, target: str | Path, limit: int | None = None) -> dict[str, int]:
    """Write FedScale's client-behaviour trace as ``agent,start,end,period,client`` lines; return the
    numbers of agents, intervals written and empty intervals skipped."""
    clients = _clients(source, limit)
    rows: list[tuple[Any, ...]] = []
    skipped = 0
    for agent, (client, entry) in enumerate(clients):
        where = f"'{source}': client {client!r}"
        if not isinstance(entry, dict) or not {"active", "inactive"} <= set(entry):
            raise UserError(f"{where}: expected a dict with 'active' and 'inactive' lists, got "
                            f"{_kind(entry)}.")
        active, inactive = _numbers(entry["active"], f"{where}, 'active'"), _numbers(entry["inactive"],
                                                                                    f"{where}, 'inactive'")
        if len(active) != len(inactive):
            raise UserError(f"{where}: 'active' has {len(active)} times and 'inactive' {len(inactive)}; expected one "
                            "end for every start.")
        period = entry.get("finish_time")
        if period is not None:
            period = _numbers([period], f"{where}, 'finish_time'")[0]
            if period <= 0:
                raise UserError(f"{where}, 'finish_time' = {period!r}: expected a period above 0 seconds.")
        for index, (start, end) in enumerate(zip(active, inactive)):
            if start < 0 or end < start:
                raise UserError(f"{where}, interval {index}: active = {start!r}, inactive = {end!r}; expected "
                                "0 <= active <= inactive.")
            if end == start:
                skipped += 1  # online for an instant: no round can start in it
                continue
            rows.append((agent, start, end, "" if period is None else period, client))
    _write_csv(target, ("agent", "start", "end", "period", "client"), rows)
    return {"agents": len(clients), "intervals": len(rows), "skipped": skipped}


def convert_devices(source: str | Path, target: str | Path, limit: int | None = None) -> dict[str, int]:
    """Write FedScale's device capacities as ``compute_speed,download_bandwidth,upload_bandwidth,
    client`` lines (no agent column: flcore deals them out to agents in turn, as FedScale does)."""
    clients = _clients(source, limit)
    rows = []
    for client, entry in clients:
        where = f"'{source}': client {client!r}"
        if not isinstance(entry, dict) or not {"computation", "communication"} <= set(entry):
            raise UserError(f"{where}: expected a dict with 'computation' and 'communication', got {_kind(entry)}.")
        ms, kbits = _numbers([entry["computation"], entry["communication"]], where)
        if ms <= 0 or kbits <= 0:
            raise UserError(f"{where}: computation = {ms!r} ms, communication = {kbits!r} kbit/s; expected both "
                            "above 0.")
        bandwidth = kbits * BYTES_PER_KBIT
        rows.append((1000.0 / (TRAINING_PER_INFERENCE * ms), bandwidth, bandwidth, client))
    _write_csv(target, ("compute_speed", "download_bandwidth", "upload_bandwidth", "client"), rows)
    return {"agents": len(rows)}


CONVERTERS: dict[str, Callable[..., dict[str, int]]] = {"fedscale-behaviour": convert_behaviour,
                                                         "fedscale-devices": convert_devices}


def _clients(source: str | Path, limit: int | None) -> list[tuple[Any, Any]]:
    data = load_plain_pickle(source)
    if not isinstance(data, dict):
        raise UserError(f"'{source}': expected a dict of clients at the top, got {_kind(data)}.")
    try:
        ordered = sorted(data.items(), key=lambda item: item[0])
    except TypeError:
        raise UserError(f"'{source}': client ids of different types cannot be ordered; expected numbers or strings."
                        ) from None
    return ordered if limit is None else ordered[:limit]


def _numbers(values: Any, where: str) -> list[float]:
    if not isinstance(values, (list, tuple)):
        raise UserError(f"{where}: expected a list of numbers, got {_kind(values)}.")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: {value!r} is not a finite number.")
        out.append(float(value))
    return out


def _kind(value: Any) -> str:
    return type(value).__name__


def _write_csv(target: str | Path, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    from flcore.engine.checkpoint import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows((_cell(v) for v in row) for row in rows)
    write_text(target, buffer.getvalue())


def _cell(value: Any) -> Any:
    return repr(value) if isinstance(value, float) and not value.is_integer() else (
        int(value) if isinstance(value, float) else value)
