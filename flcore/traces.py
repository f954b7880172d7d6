"""Trace files: per-agent tables of numbers read as NumPy columns, every error naming the file, the
line and the column.

A trace is a CSV file with a header line naming its columns (docs/heterogeneity.md documents the
layouts flcore reads: online intervals, device speeds); lines that are empty or start with ``#`` are
skipped. A ``.parquet`` file is read too when pyarrow is installed. A trace is data, never code:
reading one runs nothing from it.

    table = read_table("online.csv", required=("agent", "start", "end"), optional=("period",))
    table.columns["start"]          # float64 array, one entry per data line
    table.fail(7, "end", "is before start")   # ConfigError: "trace 'online.csv', line 9, ..."
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from flcore.errors import ConfigError


@dataclass
class Table:
    """A trace's columns (float64), and how to name a data row in an error."""

    path: Path
    columns: dict[str, np.ndarray]
    sha256: str
    _lines: list[int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def line(self, row: int) -> int:
        """The file's line number (1-based) of data row ``row`` (0-based); Parquet: the row + 1."""
        if self.path.suffix.lower() == ".parquet":
            return row + 1
        if self._lines is None:
            self._lines = [number for number, text in _data_lines(self.path)][1:]  # after the header
        return self._lines[row]

    def fail(self, row: int, column: str, problem: str) -> ConfigError:
        """The error for data row ``row``: file, line, column, value and what is wrong."""
        value = self.columns[column][row] if column in self.columns else None
        shown = "" if value is None else f" = {_number(value)}"
        where = "row" if self.path.suffix.lower() == ".parquet" else "line"
        return ConfigError(f"trace '{self.path}', {where} {self.line(row)}, column '{column}'{shown}: {problem}.")

    def integers(self, column: str, low: int, high: int, what: str) -> np.ndarray:
        """A column of whole numbers in ``[low, high)``, or the error naming the first that is not."""
        values = self.columns[column]
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < low) | (values >= high)
        if bad.any():
            raise self.fail(int(np.flatnonzero(bad)[0]), column, f"expected {what}, a whole number in [{low}, {high})")
        return values.astype(np.int64)

    def positive(self, column: str, what: str) -> np.ndarray:
        """A column of finite numbers above zero, or the error naming the first that is not."""
        values = self.columns[column]
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            raise self.fail(int(np.flatnonzero(bad)[0]), column, f"expected {what}, a finite number above 0")
        return values

    def finite(self, column: str, what: str, low: float = -math.inf) -> np.ndarray:
        """A column of finite numbers at least ``low``, or the error naming the first that is not."""
        values = self.columns[column]
        bad = ~np.isfinite(values) | (values < low)
        if bad.any():
            bound = "" if low == -math.inf else f" of at least {_number(low)}"
            raise self.fail(int(np.flatnonzero(bad)[0]), column, f"expected {what}, a finite number{bound}")
        return values


def read_table(path: str | Path, required: Sequence[str], optional: Sequence[str] = ()) -> Table:
    """Read the named columns of a CSV (or Parquet) trace; other columns are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trace '{path}' does not exist (or is not a file).")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix.lower() == ".parquet":
        columns = _read_parquet(path, required, optional)
    else:
        columns = _read_csv(path, required, optional)
    return Table(path, columns, digest)


def _read_csv(path: Path, required: Sequence[str], optional: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        lines = _data_lines(path)
        first = next(lines, None)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace '{path}' is not UTF-8 text ({exc}); flcore reads CSV traces.") from None
    if first is None:
        raise ConfigError(f"trace '{path}' is empty: expected a header line naming the columns "
                          f"{', '.join(required)}.")
    header_line, header = first
    names = [name.strip() for name in next(csv.reader([header]))]
    missing = [name for name in required if name not in names]
    if missing:
        raise ConfigError(f"trace '{path}', line {header_line}: the header names the columns {names}; expected "
                          f"{', '.join(repr(m) for m in missing)} too (required: {', '.join(required)}).")
    wanted = [name for name in (*required, *optional) if name in names]
    if len(set(names)) != len(names):
        raise ConfigError(f"trace '{path}', line {header_line}: the header names a column twice: {names}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": an empty trace is valid
            data = np.loadtxt(path, delimiter=",", skiprows=header_line, comments="#", ndmin=2, dtype=np.float64,
                              usecols=[names.index(name) for name in wanted], encoding="utf-8")
    except ValueError:
        raise _first_bad_cell(path, names, wanted) from None
    if data.shape[0] == 0:
        data = np.zeros((0, len(wanted)))
    return {name: np.ascontiguousarray(data[:, i]) for i, name in enumerate(wanted)}


def _first_bad_cell(path: Path, names: list[str], wanted: list[str]) -> ConfigError:
    """Scan the file line by line for the first cell NumPy could not read, to name it."""
    lines = _data_lines(path)
    next(lines)
    for number, text in lines:
        cells = next(csv.reader([text]))
        if len(cells) != len(names):
            return ConfigError(f"trace '{path}', line {number}: {len(cells)} values where the header names "
                               f"{len(names)} columns ({', '.join(names)}).")
        for name in wanted:
            cell = cells[names.index(name)].strip()
            try:
                float(cell)
            except ValueError:
                return ConfigError(f"trace '{path}', line {number}, column '{name}' = {cell!r}: expected a number.")
    return ConfigError(f"trace '{path}' could not be read as CSV numbers.")


def _data_lines(path: Path):
    """``(line number, text)`` of every line that is neither empty nor a ``#`` comment."""
    with path.open(encoding="utf-8", newline="") as handle:
        for number, text in enumerate(handle, start=1):
            stripped = text.strip()
            if stripped and not stripped.startswith("#"):
                yield number, stripped


def _read_parquet(path: Path, required: Sequence[str], optional: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"trace '{path}' is Parquet, which needs pyarrow (pip install pyarrow); or write it as "
                          "CSV.") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # a damaged file: bad input, not a crash
        raise ConfigError(f"trace '{path}' could not be read as Parquet: {exc}") from None
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ConfigError(f"trace '{path}' has the columns {table.column_names}; expected "
                          f"{', '.join(repr(m) for m in missing)} too.")
    out = {}
    for name in (*required, *optional):
        if name in table.column_names:
            try:
                out[name] = np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"trace '{path}', column '{name}': expected numbers ({exc}).") from None
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))
