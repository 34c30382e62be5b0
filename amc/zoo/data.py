"""Built-in data sets as in-memory tensors, resized to the model's input shape.

Specs: ``digits`` (scikit-learn), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist``),
``mnist:/folder`` (any folder of IDX files), ``synthetic`` (labelled by a seeded random teacher),
``cifar10:/path`` (the CIFAR-10 *binary* version), or ``package.module:callable``.
Nothing is downloaded and nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from amc.errors import DataError, unknown_name
from amc.zoo._spec import call_with_accepted, import_callable, is_callable_spec
from amc.zoo.readers import read_cifar10_binary, read_idx

DIGITS_SPLIT = "digits_split.json"  # row indices of the fixed digits split (package data)

InputShape = tuple[int, int, int]
_IDX_PARTS = {
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}
_CIFAR_TRAIN = tuple(f"data_batch_{index}.bin" for index in range(1, 6))
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class DataSplits:
    """A train and a test split with the facts a model needs about them.

    Attributes:
        train: training samples, ``(input, label)`` pairs (a ``TensorDataset`` for built-ins).
        test: held-out samples, same form.
        num_classes: number of label values (labels are ``0 .. num_classes - 1``).
        input_shape: ``(C, H, W)`` of one input.
        name: the spec the data came from.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: InputShape
    name: str

    def loader(
        self,
        split: str = "train",
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        """A DataLoader over one split, shuffled reproducibly from ``seed`` when ``shuffle``.

        Example:
            >>> inputs, labels = next(iter(get_data("digits").loader("test", batch_size=8)))
            >>> tuple(inputs.shape), tuple(labels.shape)
            ((8, 3, 32, 32), (8,))
        """
        splits = {"train": self.train, "test": self.test}
        if split not in splits:
            raise unknown_name("split", split, splits)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            splits[split],
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
        )


def _to_inputs(
    train: torch.Tensor, test: torch.Tensor, input_shape: InputShape, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, resize, convert channels and normalise (train statistics) image tensors (N,C,h,w)."""
    channels, height, width = input_shape
    source_channels = train.shape[1]
    if channels != source_channels and not (source_channels == 1 or channels == 1):
        raise DataError(
            f"Cannot turn {source_channels}-channel images into {channels} channels; "
            f"use an input shape with 1 or {source_channels} channels."
        )

    def prepare(images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for chunk in images.split(4096):
            chunk = chunk.float() / scale
            if source_channels == 3 and channels == 1:
                weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                chunk = (chunk * weights).sum(dim=1, keepdim=True)
            if chunk.shape[-2:] != (height, width):
                chunk = F.interpolate(chunk, size=(height, width), mode="bilinear")
            chunks.append(chunk)
        return torch.cat(chunks) if chunks else images.new_zeros((0, 1, height, width)).float()

    train_x, test_x = prepare(train), prepare(test)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    if train_x.shape[1] != channels:
        # A stride-0 view: grey images repeated to C channels cost no extra memory.
        train_x = train_x.expand(-1, channels, -1, -1)
        test_x = test_x.expand(-1, channels, -1, -1)
    return train_x, test_x


def _splits(
    name: str,
    images: tuple[torch.Tensor, torch.Tensor],
    labels: tuple[torch.Tensor, torch.Tensor],
    input_shape: InputShape,
    limit: int | None,
    scale: float,
) -> DataSplits:
    """Limit, convert and package raw (N,C,h,w) images and labels as DataSplits."""
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of samples per split, got {limit}.")
    train_images, test_images = (split[:limit] for split in images)
    train_labels, test_labels = (split[:limit].long() for split in labels)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_x, test_x = _to_inputs(train_images, test_images, input_shape, scale)
    return DataSplits(
        train=TensorDataset(train_x, train_labels),
        test=TensorDataset(test_x, test_labels),
        num_classes=num_classes,
        input_shape=tuple(input_shape),  # type: ignore[arg-type]
        name=name,
    )


def _no_location(name: str, location: str | None) -> None:
    if location:
        raise DataError(f"Data set {name!r} takes no location, got {name}:{location}.")


def load_digits_data(
    location: str | None, input_shape: InputShape, limit: int | None, test_fraction: float = 0.2
) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1797 images), a fixed stratified split.

    The CSV file is read from the installed scikit-learn without importing it (the import
    costs each Ray worker about 1.5 s); the split is the one
    ``train_test_split(test_size=0.2, random_state=0, stratify=target)`` makes, stored in
    ``digits_split.json``. Another ``test_fraction`` asks scikit-learn for that split.
    """
    _no_location("digits", location)
    rows = _digits_rows()
    images, target = rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    if test_fraction == 0.2:
        split = json.loads(resources.files("amc.zoo").joinpath(DIGITS_SPLIT).read_text())
        train, test = np.array(split["train"]), np.array(split["test"])
    else:
        from sklearn.model_selection import train_test_split

        train, test = train_test_split(
            np.arange(len(target)),
            test_size=test_fraction,
            random_state=0,
            stratify=target,
        )
    inputs = (
        torch.from_numpy(images[train]).unsqueeze(1),
        torch.from_numpy(images[test]).unsqueeze(1),
    )
    labels = (torch.from_numpy(target[train]), torch.from_numpy(target[test]))
    return _splits("digits", inputs, labels, input_shape, limit, scale=16.0)


def _digits_rows() -> np.ndarray:
    """The rows of scikit-learn's ``digits.csv.gz``: 64 pixel values (0-16), then the label."""
    package = importlib.util.find_spec("sklearn")
    folders = package.submodule_search_locations if package is not None else None
    path = Path(list(folders)[0]) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if path is None or not path.is_file():
        raise DataError(
            "The built-in 'digits' data set is scikit-learn's bundled digits.csv.gz, which was "
            "not found; install scikit-learn (pip install scikit-learn) or use another data set."
        )
    return np.loadtxt(path, delimiter=",")


def _find_idx(folder: Path, stem: str, ndim: int) -> Path | None:
    for name in (f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_idx_folder(
    location: str | None, input_shape: InputShape, limit: int | None, name: str = "mnist"
) -> DataSplits:
    """A folder of MNIST-style IDX files: train-images-idx3-ubyte[.gz], t10k-labels-... ."""
    if not location:
        raise DataError(
            f"Data set {name!r} needs a folder of IDX files: use '{name}:/path/to/folder'."
        )
    folder = Path(location).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"IDX folder {str(folder)!r} does not exist (data spec {name}:{location})."
        )
    found = {key: _find_idx(folder, stem, ndim) for key, (stem, ndim) in _IDX_PARTS.items()}
    missing = [
        f"{stem}-idx{ndim}-ubyte[.gz]"
        for key, (stem, ndim) in _IDX_PARTS.items()
        if found[key] is None
    ]
    if missing:
        raise DataError(
            f"IDX folder {str(folder)!r} lacks {', '.join(missing)}. Expected the four MNIST-style"
            " files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            "t10k-labels-idx1-ubyte, optionally gzipped."
        )
    arrays = {key: read_idx(path) for key, path in found.items() if path is not None}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"IDX {split} files in {str(folder)!r} do not match: images {images.shape}, "
                f"labels {labels.shape}; expected (N, H, W) images and (N,) labels."
            )
    return _splits(
        name,
        (
            torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
            torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        ),
        (
            torch.from_numpy(arrays["train_labels"].astype(np.int64)),
            torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        ),
        input_shape,
        limit,
        scale=255.0,
    )


def fashion_mnist_folder() -> Path:
    """The folder of Debian's ``dataset-fashion-mnist``, found with ``dpkg -L``."""
    fix = (
        "Install it with 'apt-get install dataset-fashion-mnist', or point at a folder of "
        "Fashion-MNIST IDX files with 'mnist:/path/to/folder'."
    )
    if shutil.which("dpkg") is None:
        raise DataError(f"Fashion-MNIST needs Debian's package dataset-fashion-mnist. {fix}")
    listing = subprocess.run(
        ["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True, check=False
    )
    for line in listing.stdout.splitlines() if listing.returncode == 0 else []:
        if Path(line).name.startswith("train-images-idx3-ubyte") and Path(line).is_file():
            return Path(line).parent
    raise DataError(f"The package dataset-fashion-mnist is not installed. {fix}")


def load_fashion_mnist(
    location: str | None, input_shape: InputShape, limit: int | None
) -> DataSplits:
    """Fashion-MNIST from Debian's package (or ``fashion-mnist:/folder`` of IDX files)."""
    folder = location or str(fashion_mnist_folder())
    return load_idx_folder(folder, input_shape, limit, name="fashion-mnist")


def load_cifar10(location: str | None, input_shape: InputShape, limit: int | None) -> DataSplits:
    """CIFAR-10's binary version (data_batch_1.bin .. 5, test_batch.bin) from a local folder."""
    fix = (
        f"Download the 'CIFAR-10 binary version' (cifar-10-binary.tar.gz) from {_CIFAR_URL}, "
        "extract it, and pass 'cifar10:/path/to/cifar-10-batches-bin'."
    )
    if not location:
        raise DataError(f"Data set 'cifar10' needs a folder. {fix}")
    root = Path(location).expanduser()
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder {str(root)!r} does not exist. {fix}")
    folder = next(
        (
            path
            for path in (root, root / "cifar-10-batches-bin")
            if (path / "test_batch.bin").is_file()
        ),
        root,
    )
    missing = [name for name in (*_CIFAR_TRAIN, "test_batch.bin") if not (folder / name).is_file()]
    if missing:
        pickled = (folder / "data_batch_1").exists() or (root / "cifar-10-batches-py").is_dir()
        hint = (
            " It holds the pickled 'python version', which amc never unpickles." if pickled else ""
        )
        raise DataError(f"CIFAR-10 folder {str(folder)!r} lacks {', '.join(missing)}.{hint} {fix}")
    train_parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name in _CIFAR_TRAIN:
        train_parts.append(read_cifar10_binary(folder / name))
        if limit is not None and sum(len(part[1]) for part in train_parts) >= limit:
            break
    test_images, test_labels = read_cifar10_binary(folder / "test_batch.bin")
    train_images = torch.cat([part[0] for part in train_parts])
    train_labels = torch.cat([part[1] for part in train_parts])
    return _splits(
        "cifar10",
        (train_images, test_images),
        (train_labels, test_labels),
        input_shape,
        limit,
        scale=255.0,
    )


def load_synthetic(
    location: str | None,
    input_shape: InputShape,
    limit: int | None,
    n: int = 1024,
    num_classes: int = 10,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> DataSplits:
    """Gaussian inputs labelled by a seeded random teacher (pooled features, one tanh layer)."""
    _no_location("synthetic", location)
    if n < 2 or num_classes < 2:
        raise DataError(
            f"synthetic data needs n >= 2 and num_classes >= 2, got {n}, {num_classes}."
        )
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, *input_shape), generator=generator)
    features = F.adaptive_avg_pool2d(inputs, 4).flatten(1)
    hidden = torch.tanh(features @ torch.randn(features.shape[1], 64, generator=generator))
    logits = hidden @ torch.randn(64, num_classes, generator=generator)
    # Standardising each class logit keeps the classes roughly balanced.
    labels = ((logits - logits.mean(0)) / logits.std(0).clamp_min(1e-6)).argmax(dim=1)
    n_test = max(1, int(round(n * test_fraction)))
    train_x, test_x = inputs[n_test:][:limit], inputs[:n_test][:limit]
    train_y, test_y = labels[n_test:][:limit], labels[:n_test][:limit]
    return DataSplits(
        train=TensorDataset(train_x, train_y),
        test=TensorDataset(test_x, test_y),
        num_classes=num_classes,
        input_shape=tuple(input_shape),  # type: ignore[arg-type]
        name="synthetic",
    )


DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits_data,
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_idx_folder,
    "synthetic": load_synthetic,
    "cifar10": load_cifar10,
}


def get_data(
    spec: str, input_shape: Sequence[int] = (3, 32, 32), limit: int | None = None, **kwargs: Any
) -> DataSplits:
    """Load a data set from a spec, as tensors of ``input_shape`` normalised on the train split.

    Args:
        spec: ``digits``, ``fashion-mnist``, ``mnist:/folder``, ``synthetic``,
            ``cifar10:/path`` or ``package.module:callable`` (returning DataSplits or a
            ``(train, test)`` pair of datasets).
        input_shape: ``(C, H, W)``; images are resized and grey ones repeated to C channels.
        limit: at most this many samples per split (for quick runs).
        **kwargs: options of the data set (``synthetic``: ``n``, ``num_classes``, ``seed``).

    Raises:
        UnknownNameError: an unknown data set name (with a "did you mean").
        DataError: missing files, bad files or options, with how to fix them.

    Example:
        >>> data = get_data("digits", input_shape=(1, 16, 16), limit=100)
        >>> len(data.train), data.num_classes, tuple(data.train[0][0].shape)
        (100, 10, (1, 16, 16))
    """
    shape = tuple(int(size) for size in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}.")
    name, _, location = spec.partition(":")
    if name in DATASETS:
        try:
            return DATASETS[name](location or None, shape, limit, **kwargs)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError(f"Bad options {sorted(kwargs)} for data set {name!r}: {exc}.") from exc
    if is_callable_spec(spec):
        return _from_callable(spec, shape, limit, kwargs)  # type: ignore[arg-type]
    raise unknown_name("data set", spec, DATASETS)


def _from_callable(
    spec: str, input_shape: InputShape, limit: int | None, kwargs: dict[str, Any]
) -> DataSplits:
    factory: Callable[..., Any] = import_callable(spec, "data", DataError)
    result = call_with_accepted(factory, {"input_shape": input_shape, **kwargs})
    if isinstance(result, DataSplits):
        if limit is None:
            return result
        return dataclasses.replace(
            result,
            train=Subset(result.train, range(min(limit, len(result.train)))),  # type: ignore[arg-type]
            test=Subset(result.test, range(min(limit, len(result.test)))),  # type: ignore[arg-type]
        )
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise DataError(
            f"Data spec {spec!r} returned {type(result).__name__}; expected DataSplits or a "
            "(train, test) pair of datasets of (input, label) samples."
        )
    train, test = result
    if limit is not None:
        train = Subset(train, range(min(limit, len(train))))
        test = Subset(test, range(min(limit, len(test))))
    if len(train) == 0:
        raise DataError(f"Data spec {spec!r} returned an empty train split.")
    sample_shape = tuple(train[0][0].shape)
    if len(sample_shape) != 3:
        raise DataError(
            f"Data spec {spec!r} yields inputs of shape {sample_shape}; expected (C, H, W)."
        )
    num_classes = kwargs.get("num_classes") or _count_classes(train, test)
    return DataSplits(train, test, int(num_classes), sample_shape, spec)  # type: ignore[arg-type]


def _count_classes(*datasets: Dataset) -> int:
    """One more than the largest label in the datasets."""
    largest = 0
    for dataset in datasets:
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
            largest = max(largest, int(dataset.tensors[1].max()))
        else:
            largest = max(largest, *(int(dataset[i][1]) for i in range(len(dataset))))  # type: ignore[arg-type]
    return largest + 1
