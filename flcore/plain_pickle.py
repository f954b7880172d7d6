"""Read a pickle that may hold only plain data and NumPy arrays of numbers, never running its code.

Dataset files such as CIFAR's batches are pickles, and ``pickle.load`` calls whatever a file names.
This loader follows the Python documentation's "restricting globals" recipe and the design of
torch's ``weights_only`` unpickler: a global is looked up in a fixed table, never imported by name,
and nothing outside the table can be called. The table holds stand-ins for the few NumPy callables
an array's pickle names (``_reconstruct``, ``_frombuffer``, ``dtype``) and for ``_codecs.encode``
(bytes in protocol 2); the stand-ins check their arguments and build the array themselves, so
NumPy's ``__setstate__`` never sees a file's bytes. Arrays of Python objects, structured dtypes and
anything else are refused.

    data = load_plain(path)  # dicts, lists, tuples, str, bytes, numbers, None and numeric arrays
    data = load_plain(path, arrays=False)  # plain containers and scalars only (FedScale's traces)
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

#: the dtypes an array may have: booleans, integers, unsigned integers and floats
_NUMERIC = re.compile(r"[<>|=]?[biuf]\d{1,2}")
_PLAIN = (str, bytes, int, float, bool, type(None))


class RefusedPickle(ValueError):
    """The file holds something other than plain data and numeric arrays."""


class _StandIn:
    """Base of the stand-ins. A pickle may BUILD (set the state of) what it creates; on a stand-in
    class itself that would change the class for every later load, so it is refused."""

    def __setstate__(self, state: Any) -> None:
        raise RefusedPickle("a state set on a class")


class _ArrayClass(_StandIn):
    """Stands for ``numpy.ndarray``: a marker for ``_reconstruct``, not callable."""


class _Dtype(_StandIn):
    """Stands for ``numpy.dtype(spec, align, copy)`` until its state (the byte order) is set."""

    spec: Any = None
    byteorder = "|"

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        self.spec, self.byteorder = spec, "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        spec = self.spec.decode("latin1") if isinstance(self.spec, bytes) else self.spec
        if not isinstance(spec, str) or not _NUMERIC.fullmatch(spec):
            raise RefusedPickle(f"an array of dtype {spec!r} (only booleans, integers and floats are read)")
        dtype = np.dtype(spec if spec[0] in "<>|=" else self.byteorder + spec)
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise RefusedPickle(f"an array of dtype {spec!r}")
        return dtype


class _Array(_StandIn):
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)``; its state
    ``(version, shape, dtype, fortran_order, data)`` is checked and the array built from the bytes."""

    array: np.ndarray | None = None

    def __init__(self, cls: Any, shape: Any = (0,), typecode: Any = b"b") -> None:
        if cls is not _ArrayClass:
            raise RefusedPickle(f"an array of class {cls!r}")

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise RefusedPickle("an array whose state is not (version, shape, dtype, order, data)")
        _, shape, dtype, fortran, data = state
        if isinstance(data, str):  # a Python 2 pickle read with encoding='latin1'
            data = data.encode("latin1")
        self.array = _from_bytes(data, dtype, shape, "F" if fortran is True else "C")


class _FromBuffer(_StandIn):
    """Stands for ``numpy.core.numeric._frombuffer``, which protocol 5 pickles of arrays name."""

    def __new__(cls, buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:  # type: ignore[misc]
        data = bytes(buffer) if isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) else buffer
        return _from_bytes(data, dtype, shape, "F" if order == "F" else "C")


def _from_bytes(data: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise RefusedPickle("an array without a plain dtype")
    resolved = dtype.resolve()
    if not isinstance(data, bytes):
        raise RefusedPickle("an array whose data are not raw bytes")
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise RefusedPickle(f"an array of shape {shape!r}")
    if len(data) != math.prod(shape) * resolved.itemsize:
        raise RefusedPickle(f"an array of shape {shape} and dtype {resolved} with {len(data)} bytes of data")
    return np.frombuffer(data, dtype=resolved).reshape(shape, order=order).copy()


class _Encode(_StandIn):
    """Stands for ``_codecs.encode``, with which protocol 2 pickles of Python 3 store bytes."""

    def __new__(cls, text: Any, encoding: Any = "utf-8") -> bytes:  # type: ignore[misc]
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise RefusedPickle("a call of _codecs.encode other than latin-1 bytes")
        return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _Array,  # NumPy 1 and Python 2 files (the CIFAR originals)
    ("numpy._core.multiarray", "_reconstruct"): _Array,  # NumPy 2
    ("numpy.core.numeric", "_frombuffer"): _FromBuffer,
    ("numpy._core.numeric", "_frombuffer"): _FromBuffer,
    ("_codecs", "encode"): _Encode,
}


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, handle: Any, encoding: str, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(handle, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedPickle(f"a reference to {module}.{name}, which could run code") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("a persistent reference")


def _plain(value: Any, depth: int = 0) -> Any:
    """The loaded value with stand-ins replaced by arrays; anything else is refused."""
    if depth > 100:
        raise RefusedPickle("containers nested more than 100 deep")
    if isinstance(value, _Array):
        if value.array is None:
            raise RefusedPickle("an array without its data")
        return value.array
    if isinstance(value, np.ndarray) or type(value) in _PLAIN:
        return value
    if type(value) is dict:
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_plain(v, depth + 1) for v in value)
    raise RefusedPickle(f"an object of type {type(value).__name__}")


def load_plain(path: str | Path, encoding: str = "latin1", arrays: bool = True) -> Any:
    """Unpickle ``path`` if it holds only plain data (and, with ``arrays``, numeric NumPy arrays).

    Raises :class:`RefusedPickle` naming what the file holds otherwise, and ``pickle.UnpicklingError``,
    ``EOFError`` or ``OSError`` for a file that is not a complete pickle.
    """
    with open(path, "rb") as handle:
        try:
            loaded = _PlainUnpickler(handle, encoding, _ALLOWED if arrays else {}).load()
        except RefusedPickle:
            raise
        except (TypeError, AttributeError, IndexError, KeyError, ValueError) as exc:  # a stand-in misused
            raise RefusedPickle(f"a malformed object ({type(exc).__name__}: {exc})") from None
    return _plain(loaded)
