"""Reading a run folder that may come from anyone: regular files inside it, and clear errors.

A run folder is untrusted input: it may come from another machine, a colleague or an archive. Reading
one never follows a symbolic link (a link can point anywhere on this machine, and `flcore report`
would copy that file into its page), never blocks on a FIFO or device, and turns a malformed file into
one :class:`~flcore.errors.UserError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from flcore.errors import UserError
from flcore.params import format_validation_error

Model = TypeVar("Model", bound=BaseModel)


class RunFiles:
    """The files of one run (or sweep) folder, each read only if it is a regular file inside it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self, relative: str) -> str:
        return f"'{self.root / relative}'"

    def path(self, relative: str) -> Path:
        """The path of ``relative``, after checking that no part of it below the root is a link."""
        path = self.root
        for part in Path(relative).parts:
            if part in ("..", "/"):
                raise UserError(f"{self.describe(relative)}: a path inside a run folder may not leave it.")
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return path
            if stat.S_ISLNK(mode):
                raise UserError(
                    f"'{path}' is a symbolic link. flcore reads only the regular files inside a run folder and "
                    "never follows a link out of it (it could point at any file on this machine); replace the "
                    "link with the file itself, or remove it."
                )
        return path

    def is_file(self, relative: str) -> bool:
        """Whether ``relative`` exists; raises if it, or a folder on the way to it, is a link."""
        return self.path(relative).exists()

    def folders(self, relative: str = "") -> list[str]:
        """The names of the folders directly in ``relative``, sorted; raises if one is a link."""
        base = self.path(relative) if relative else self.root
        if not base.is_dir():
            return []
        entries = list(os.scandir(base))
        for entry in entries:
            if entry.is_symlink() and entry.is_dir():
                self.path(f"{relative}/{entry.name}" if relative else entry.name)  # raises, naming the link
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def read_bytes(self, relative: str) -> bytes | None:
        """The bytes of a regular file, or None when it does not exist."""
        path = self.path(relative)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(f"{self.describe(relative)} cannot be read: {exc.strerror}.") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UserError(f"{self.describe(relative)} is not a regular file; a run folder holds only files "
                                "and folders.")
            return handle.read()

    def text(self, relative: str) -> str | None:
        """A UTF-8 text file's contents, or None when it does not exist."""
        data = self.read_bytes(relative)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{self.describe(relative)} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); "
                            "flcore writes its run files as UTF-8.") from None

    def json(self, relative: str, model: type[Model]) -> Model | None:
        """A JSON file validated against ``model``, or None when it does not exist."""
        text = self.text(relative)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.describe(relative)} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno}. Was it cut short or edited by hand?") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, "", f"file {self.describe(relative)}")
                            + f" Expected {model.__doc__.strip() if model.__doc__ else 'what flcore writes'}") from None

    def csv_rows(self, relative: str) -> list[dict[str, str]] | None:
        """The rows of a CSV file with a header, or None when it does not exist."""
        text = self.text(relative)
        if text is None:
            return None
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            rows = list(reader)
        except csv.Error as exc:
            raise UserError(f"{self.describe(relative)} is not valid CSV: {exc}.") from None
        if text.strip() and not reader.fieldnames:
            raise UserError(f"{self.describe(relative)} has no header row.")
        for number, row in enumerate(rows, start=2):
            if None in row:
                raise UserError(f"{self.describe(relative)}, line {number}: more fields than the header has "
                                f"({len(reader.fieldnames or [])}).")
            if any(value is None for value in row.values()):
                raise UserError(f"{self.describe(relative)}, line {number}: fewer fields than the header has "
                                f"({len(reader.fieldnames or [])}).")
        return rows


def numbers(rows: list[dict[str, str]], column: str, where: str, integer: bool = False) -> np.ndarray:
    """A CSV column as floats (NaN where empty or absent), or ints; bad values raise a UserError."""
    values = []
    for number, row in enumerate(rows, start=2):
        raw = row.get(column)
        if raw in (None, ""):
            if integer:
                raise UserError(f"{where}, line {number}: column '{column}' is empty; expected a whole number.")
            values.append(np.nan)
            continue
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{where}, line {number}: column '{column}' = {raw!r} is not a number.") from None
        if integer and not value.is_integer():
            raise UserError(f"{where}, line {number}: column '{column}' = {raw!r} is not a whole number.")
        values.append(value)
    return np.array(values, dtype=np.int64 if integer else np.float64)


def require_columns(rows: list[dict[str, str]], columns: list[str], where: str) -> None:
    """Raise a UserError naming the columns that a CSV file lacks."""
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if rows and missing:
        raise UserError(f"{where} lacks the column(s) {', '.join(missing)}; its columns are "
                        f"{', '.join(rows[0]) or 'none'}.")

