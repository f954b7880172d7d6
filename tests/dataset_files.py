"""Writers of tiny dataset files in the real on-disk formats (IDX, gzip, pickled CIFAR batches,
including the Python 2 pickles of the official CIFAR archives)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx_images(path: Path, images: np.ndarray, compress: bool = True) -> None:
    """IDX3: magic 0x00000803, count, rows, cols (big-endian int32), then uint8 pixels."""
    payload = struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes()
    _write(path, payload, compress)


def write_idx_labels(path: Path, labels: np.ndarray, compress: bool = True) -> None:
    """IDX1: magic 0x00000801, count, then uint8 labels."""
    payload = struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()
    _write(path, payload, compress)


def _write(path: Path, payload: bytes, compress: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def mnist_like(root: Path, folder: str, n_train: int, n_test: int, classes: int = 10, prefix: str = "",
               label_offset: int = 0, rng=None) -> dict[str, np.ndarray]:
    """Write MNIST-family IDX files; each image's first pixel row encodes its index (for overlap checks)."""
    rng = rng or np.random.default_rng(0)
    out = {}
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        images[:, 0, 1] = np.arange(n) // 256
        labels = (np.arange(n) % classes) + label_offset
        image_file, label_file = names[split]
        if prefix:
            image_file, label_file = f"{prefix}-{split}-images-idx3-ubyte", f"{prefix}-{split}-labels-idx1-ubyte"
        write_idx_images(root / folder / "raw" / image_file, images)
        write_idx_labels(root / folder / "raw" / label_file, labels)
        out[f"x_{split}"], out[f"y_{split}"] = images, labels
    return out


def cifar_like(root: Path, hundred: bool, per_batch: int, rng=None, protocol: int | None = None,
               python2: bool = False) -> dict[str, np.ndarray]:
    """Write CIFAR-10 (five data batches, test batch, meta) or CIFAR-100 (train, test, meta) pickles,
    with ``pickle.dump`` (at ``protocol``) or, with ``python2``, as the official files are written."""
    dump = python2_pickle if python2 else (lambda obj: pickle.dumps(obj, protocol=protocol))
    rng = rng or np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"
    batches = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out: dict[str, list] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for name in batches:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=per_batch).tolist()
        (folder / name).write_bytes(dump({"data": data, label_key: labels, "batch_label": name}))
        split = "test" if "test" in name else "train"
        out[f"x_{split}"].append(data.reshape(-1, 3, 32, 32))
        out[f"y_{split}"].append(np.array(labels))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]} \
        if hundred else {"label_names": [f"c{i}" for i in range(10)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(dump(meta))
    return {k: np.concatenate(v) for k, v in out.items()}


def python2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle writes one, ``str`` as byte strings and arrays through
    ``numpy.core.multiarray._reconstruct``: the format of the official CIFAR batches. Handles the
    dicts, strings, ints, lists and uint8 arrays that those batches hold."""
    return b"\x80\x02" + _py2(obj) + b"."


def _py2(obj) -> bytes:
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(v) for v in obj) + b"e"
    if isinstance(obj, str):
        return _py2_bytes(obj.encode("latin1"))
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        dtype = (b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        shape = b"(" + b"".join(_py2(int(n)) for n in obj.shape) + b"t"
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                + b"(K\x01" + shape + dtype + b"\x89" + _py2_bytes(obj.tobytes()) + b"tb")
    raise TypeError(f"no Python 2 encoding here for {type(obj).__name__}")


def _py2_bytes(data: bytes) -> bytes:
    return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data
