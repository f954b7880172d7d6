"""The paper's Table 1: MNIST, FashionMNIST, EMNIST, CIFAR, from the official files.

Images stay at their native size (28x28 or 32x32) and are kept as ``uint8``; the batch transform
scales them and normalizes with the training split's own per-channel mean and standard deviation.
Nothing is downloaded unless ``download: true``; when files are missing the error lists them, where
they were looked for, and how to get them.

A dataset folder is untrusted (shared folders, copies from colleagues): reading it never runs code
from it. The MNIST family is parsed from its IDX bytes by torchvision's classes, with their legacy
``processed/*.pt`` cache ignored; CIFAR's pickled batches are read by :mod:`.plain_pickle`, which
admits only plain data and numeric arrays, and checked for the shapes and labels of a CIFAR batch.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from flcore.data import ArrayDataModule, DataSpec, normalizer, split_validation
from flcore.errors import DataNotFoundError
from flcore.params import ComponentParams
from flcore.plain_pickle import RefusedPickle, load_plain


class VisionParams(ComponentParams):
    root: str = Field("data", description="Folder holding (or receiving) the dataset's files.")
    download: bool = Field(False, description="Download the files if they are missing.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="Share of the training split held out for validation.")
    split_seed: int = Field(0, ge=0, description="Seed of the validation split.")


class EMNISTParams(VisionParams):
    split: Literal["byclass", "bymerge", "balanced", "digits", "letters", "mnist"] = "balanced"


def _expected_files(name: str, root: Path, split: str | None = None) -> list[Path]:
    if name in ("MNIST", "FashionMNIST"):
        stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        return [root / name / "raw" / s for s in stems]
    if name == "EMNIST":
        return [root / "EMNIST" / "raw" / f"emnist-{split}-{part}-{kind}-ubyte"
                for part in ("train", "test") for kind in ("images-idx3", "labels-idx1")]
    folder = {"CIFAR10": "cifar-10-batches-py", "CIFAR100": "cifar-100-python"}[name]
    files = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]) if name == "CIFAR10" \
        else ["train", "test", "meta"]
    return [root / folder / f for f in files]


def _gunzip_idx_files(name: str, files: list[Path]) -> None:
    """Accept IDX files as distributed (``.gz``): torchvision reads them uncompressed. Each is written
    to a new temporary file and renamed into place, so a symlink planted in the folder is never
    written through and an interrupted run leaves no half file."""
    for path in files:
        packed = path.with_name(path.name + ".gz")
        if path.exists() or path.is_symlink() or not packed.is_file():
            continue
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            with gzip.open(packed, "rb") as source, os.fdopen(fd, "wb") as target:
                shutil.copyfileobj(source, target)
            os.replace(tmp, path)
        except (OSError, EOFError) as exc:
            Path(tmp).unlink(missing_ok=True)
            raise DataNotFoundError(f"dataset {name}: '{packed}' could not be decompressed: {exc}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _missing(name: str, files: list[Path], root: Path) -> DataNotFoundError:
    absent = [str(f) for f in files if not f.exists()]
    return DataNotFoundError(
        f"dataset {name}: {len(absent)} file(s) missing under '{root.resolve()}': {', '.join(absent)}. "
        f"Set 'dataset.download: true' to fetch them with torchvision, or copy the official files there "
        f"(IDX files may stay gzip-compressed; set 'dataset.root' to another folder if they live elsewhere)."
    )


def _idx_class(name: str):
    """torchvision's MNIST-family class without its legacy cache: it would ``torch.load`` files named
    ``processed/training.pt`` from the dataset folder (unpickling them, before torchvision 0.20) in
    place of the IDX files."""
    from torchvision import datasets

    # the same class name: torchvision finds the files under <root>/<class name>/raw
    return type(name, (getattr(datasets, name),), {"_check_legacy_exist": lambda self: False})


def _load_idx(name: str, params: VisionParams, files: list[Path], **kwargs) -> list[torch.Tensor]:
    root = Path(params.root)
    cls = _idx_class(name)
    try:
        splits = [cls(str(root), train=train, download=params.download, **kwargs) for train in (True, False)]
    except (RuntimeError, OSError, AssertionError, ValueError, KeyError) as exc:  # torchvision checks with assert
        if params.download:
            raise DataNotFoundError(f"dataset {name}: download into '{root.resolve()}' failed: {exc}") from None
        if all(f.exists() for f in files):
            raise DataNotFoundError(f"dataset {name}: the IDX files under '{root.resolve()}' could not be read: "
                                    f"{exc or type(exc).__name__}") from None
        raise _missing(name, files, root) from None
    out: list[torch.Tensor] = []
    for split, (images, labels) in zip(splits, ((files[0], files[1]), (files[2], files[3]))):
        if split.data.dim() != 3 or tuple(split.data.shape[1:]) != (28, 28) or len(split.data) != len(split.targets):
            raise DataNotFoundError(
                f"dataset {name}: '{images}' and '{labels}' hold {tuple(split.data.shape)} images and "
                f"{len(split.targets)} labels; expected N images of 28x28 and N labels")
        out += [split.data.unsqueeze(1), torch.as_tensor(split.targets, dtype=torch.int64)]
    return out


_CIFAR = {  # name: (classes, label key, train files, test files, meta file, label names key)
    "CIFAR10": (10, "labels", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "label_names"),
    "CIFAR100": (100, "fine_labels", ["train"], ["test"], "meta", "fine_label_names"),
}


def _load_cifar(name: str, params: VisionParams, files: list[Path]) -> list[torch.Tensor]:
    root = Path(params.root)
    if params.download and not all(f.exists() for f in files):
        _download_cifar(name, root)
    if not all(f.exists() for f in files):
        raise _missing(name, files, root)
    classes, label_key, train_files, test_files, meta_file, names_key = _CIFAR[name]
    folder = files[0].parent
    names = _read_cifar_file(name, folder / meta_file).get(names_key)
    if not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
        raise _unreadable(name, folder / meta_file, f"'{names_key}' is not a list of {classes} class names")
    out: list[torch.Tensor] = []
    for batch_files in (train_files, test_files):
        images, labels = zip(*(_read_cifar_batch(name, folder / f, label_key, classes) for f in batch_files))
        x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
        out += [x, torch.from_numpy(np.concatenate(labels))]
    return out


def _read_cifar_batch(name: str, path: Path, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images (N x 3072 uint8) and labels (N ints below ``classes``), checked."""
    batch = _read_cifar_file(name, path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _unreadable(name, path, f"'data' is a {found}, not a uint8 array of N x 3072 pixels")
    labels = np.asarray(labels) if isinstance(labels, (list, np.ndarray)) else None
    if labels is None or labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise _unreadable(name, path, f"'{label_key}' is not a list of {len(data)} integer labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise _unreadable(name, path, f"'{label_key}' holds labels outside 0..{classes - 1}")
    return data, labels.astype(np.int64)


def _read_cifar_file(name: str, path: Path) -> dict:
    try:
        content = load_plain(path, encoding="latin1")
    except RefusedPickle as exc:
        raise _unreadable(name, path, f"it holds {exc}; flcore reads only plain data and numeric arrays "
                          "from a dataset file and never runs code from it") from None
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise _unreadable(name, path, f"it is not a complete pickle ({exc or type(exc).__name__})") from None
    if not isinstance(content, dict):
        raise _unreadable(name, path, f"it holds a {type(content).__name__}, not a dict")
    return content


def _unreadable(name: str, path: Path, reason: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"dataset {name}: '{path}' is not a CIFAR file flcore can read: {reason}. Replace it with the official "
        "file, or download into an empty folder with 'dataset.download: true'."
    )


def _download_cifar(name: str, root: Path) -> None:
    """torchvision's archive, checked against its MD5 and extracted (torchvision's classes are not
    instantiated: they unpickle the batches with ``pickle.load``)."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(datasets, name)
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except (RuntimeError, OSError) as exc:
        raise DataNotFoundError(f"dataset {name}: download into '{root.resolve()}' failed: {exc}") from None


def _load(name: str, params: VisionParams, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    root = Path(params.root)
    files = _expected_files(name, root, kwargs.get("split"))
    if name.startswith("CIFAR"):
        return tuple(_load_cifar(name, params, files))  # type: ignore[return-value]
    _gunzip_idx_files(name, files)
    if not params.download and not all(f.exists() for f in files):
        raise _missing(name, files, root)
    return tuple(_load_idx(name, params, files, **kwargs))  # type: ignore[return-value]


def _module(name: str, params: VisionParams, x_train, y_train, x_test, y_test, num_classes: int) -> ArrayDataModule:
    for labels in (y_train, y_test):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataNotFoundError(
                f"dataset {name}: the files under '{Path(params.root).resolve()}' hold labels from {int(labels.min())} "
                f"to {int(labels.max())}; {name} has the classes 0..{num_classes - 1}. Are they another dataset's?")
    train, val = split_validation(x_train, y_train, params.val_fraction, params.split_seed)
    pixels = train[0].float() / 255
    dims = [0] + list(range(2, pixels.dim()))
    mean, std = pixels.mean(dim=dims), pixels.std(dim=dims).clamp_min(1e-6)
    return ArrayDataModule(name, train, (x_test, y_test), num_classes, val=val,
                           transform=normalizer(tuple(mean.tolist()), tuple(std.tolist()), scale=255.0))


def _spec(num_classes: int, shape: tuple[int, ...]):
    def describe_spec(params: ComponentParams) -> DataSpec:
        classes = _EMNIST_CLASSES[params.split] if isinstance(params, EMNISTParams) else num_classes
        return DataSpec(classes, shape)

    return describe_spec


def MNIST(params: VisionParams) -> ArrayDataModule:
    """MNIST: 60,000 + 10,000 grayscale 28x28 digits."""
    return _module("mnist", params, *_load("MNIST", params), num_classes=10)


def FashionMNIST(params: VisionParams) -> ArrayDataModule:
    """Fashion-MNIST: 60,000 + 10,000 grayscale 28x28 clothing images, 10 classes."""
    return _module("fashion_mnist", params, *_load("FashionMNIST", params), num_classes=10)


_EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "digits": 10, "letters": 26, "mnist": 10}


def EMNIST(params: EMNISTParams) -> ArrayDataModule:
    """EMNIST, any of its six splits. Images are transposed upright; ``letters`` labels are 0-based."""
    x_train, y_train, x_test, y_test = _load("EMNIST", params, split=params.split)
    x_train, x_test = x_train.transpose(-1, -2).contiguous(), x_test.transpose(-1, -2).contiguous()
    if params.split == "letters":  # the files label a..z as 1..26
        y_train, y_test = y_train - 1, y_test - 1
    return _module(f"emnist_{params.split}", params, x_train, y_train, x_test, y_test,
                   num_classes=_EMNIST_CLASSES[params.split])


def CIFAR10(params: VisionParams) -> ArrayDataModule:
    """CIFAR-10: 50,000 + 10,000 colour 32x32 images, 10 classes."""
    return _module("cifar10", params, *_load("CIFAR10", params), num_classes=10)


def CIFAR100(params: VisionParams) -> ArrayDataModule:
    """CIFAR-100: 50,000 + 10,000 colour 32x32 images, 100 fine classes."""
    return _module("cifar100", params, *_load("CIFAR100", params), num_classes=100)


# shapes known without reading the files, for `flcore describe model NAME --dataset D`
MNIST.describe_spec = _spec(10, (1, 28, 28))  # type: ignore[attr-defined]
FashionMNIST.describe_spec = _spec(10, (1, 28, 28))  # type: ignore[attr-defined]
EMNIST.describe_spec = _spec(0, (1, 28, 28))  # type: ignore[attr-defined]
CIFAR10.describe_spec = _spec(10, (3, 32, 32))  # type: ignore[attr-defined]
CIFAR100.describe_spec = _spec(100, (3, 32, 32))  # type: ignore[attr-defined]
