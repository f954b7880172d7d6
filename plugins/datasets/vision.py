"""The paper's Table 1 through torchvision's dataset classes: MNIST, FashionMNIST, EMNIST, CIFAR.

Images stay at their native size (28x28 or 32x32) and are kept as ``uint8``; the batch transform
scales them and normalizes with the training split's own per-channel mean and standard deviation.
Nothing is downloaded unless ``download: true``; when files are missing the error lists them, where
they were looked for, and how to get them.
"""

from __future__ import annotations

import gzip
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


def _gunzip_idx_files(files: list[Path]) -> None:
    """Accept IDX files as distributed (``.gz``): torchvision reads them uncompressed."""
    for path in files:
        packed = path.with_name(path.name + ".gz")
        if not path.exists() and packed.exists():
            with gzip.open(packed, "rb") as source, open(path, "wb") as target:
                shutil.copyfileobj(source, target)


def _missing(name: str, files: list[Path], root: Path) -> DataNotFoundError:
    absent = [str(f) for f in files if not f.exists()]
    return DataNotFoundError(
        f"dataset {name}: {len(absent)} file(s) missing under '{root.resolve()}': {', '.join(absent)}. "
        f"Set 'dataset.download: true' to fetch them with torchvision, or copy the official files there "
        f"(IDX files may stay gzip-compressed; set 'dataset.root' to another folder if they live elsewhere)."
    )


def _cifar_class(name: str):
    """torchvision's CIFAR class, checking that files exist rather than their MD5, so subsets load."""
    from torchvision import datasets

    base = getattr(datasets, name)

    class _CIFAR(base):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            return all((Path(self.root) / self.base_folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as handle:
                meta = pickle.load(handle, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return _CIFAR


def _load(name: str, params: VisionParams, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    root = Path(params.root)
    files = _expected_files(name, root, kwargs.get("split"))
    _gunzip_idx_files(files)
    if not params.download and not all(f.exists() for f in files):
        raise _missing(name, files, root)
    cls = _cifar_class(name) if name.startswith("CIFAR") else getattr(datasets, name)
    try:
        train = cls(str(root), train=True, download=params.download, **kwargs)
        test = cls(str(root), train=False, download=params.download, **kwargs)
    except (RuntimeError, OSError) as exc:
        if params.download:
            raise DataNotFoundError(f"dataset {name}: download into '{root.resolve()}' failed: {exc}") from None
        if all(f.exists() for f in files):
            raise DataNotFoundError(f"dataset {name}: the files under '{root.resolve()}' could not be read: {exc}") from None
        raise _missing(name, files, root) from None
    out = []
    for split in (train, test):
        data = split.data
        if isinstance(data, np.ndarray):  # CIFAR: N x H x W x C
            x = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
        else:
            x = data.unsqueeze(1)
        out += [x, torch.as_tensor(split.targets, dtype=torch.int64)]
    return tuple(out)  # type: ignore[return-value]


def _module(name: str, params: VisionParams, x_train, y_train, x_test, y_test, num_classes: int) -> ArrayDataModule:
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
