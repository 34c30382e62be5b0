from __future__ import annotations

import gzip
import re
import struct
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from amc.errors import DataError, UnknownNameError
from amc.zoo import DATASETS, DataSplits, get_data
from amc.zoo import data as data_module
from amc.zoo.readers import read_idx


def _has_fashion_mnist() -> bool:
    try:
        listing = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True)
    except FileNotFoundError:
        return False
    return listing.returncode == 0


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 4)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 2, 1, 0, 3]))
    return tmp_path


def test_registry_names() -> None:
    assert sorted(DATASETS) == ["cifar10", "digits", "fashion-mnist", "mnist", "synthetic"]


def test_digits_full_split() -> None:
    data = get_data("digits", input_shape=(1, 32, 32))
    assert isinstance(data, DataSplits)
    assert (len(data.train), len(data.test), data.num_classes) == (1437, 360, 10)
    assert (data.input_shape, data.name) == ((1, 32, 32), "digits")
    inputs, labels = data.train.tensors
    assert inputs.shape == (1437, 1, 32, 32) and inputs.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert torch.bincount(data.test.tensors[1]).tolist() == [
        36,
        36,
        35,
        37,
        36,
        37,
        36,
        36,
        35,
        36,
    ]
    assert abs(float(inputs.mean())) < 1e-4
    assert abs(float(inputs.std()) - 1.0) < 1e-3


def test_digits_three_channels_and_limit() -> None:
    data = get_data("digits", input_shape=(3, 16, 12), limit=50)
    assert (len(data.train), len(data.test)) == (50, 50)
    image = data.train[0][0]
    assert image.shape == (3, 16, 12)
    assert torch.equal(image[0], image[2])
    again = get_data("digits", input_shape=(3, 16, 12), limit=50)
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])


def test_loader_is_reproducible() -> None:
    data = get_data("synthetic", input_shape=(1, 8, 8), n=100)
    first = next(iter(data.loader("train", batch_size=16, shuffle=True, seed=3)))
    second = next(iter(data.loader("train", batch_size=16, shuffle=True, seed=3)))
    assert first[0].shape == (16, 1, 8, 8)
    assert torch.equal(first[1], second[1])
    plain = next(iter(data.loader("test", batch_size=8)))
    assert torch.equal(plain[1], data.test.tensors[1][:8])
    with pytest.raises(UnknownNameError, match=re.escape("Unknown split 'val'.")):
        data.loader("val")


def test_unknown_name() -> None:
    message = (
        "Unknown data set 'digit'. Did you mean 'digits'? "
        "Expected one of: cifar10, digits, fashion-mnist, mnist, synthetic."
    )
    with pytest.raises(UnknownNameError, match=re.escape(message)):
        get_data("digit")


def test_bad_options() -> None:
    with pytest.raises(DataError, match=re.escape("input_shape must be (C, H, W)")):
        get_data("digits", input_shape=(32, 32))
    with pytest.raises(DataError, match=re.escape("Data set 'digits' takes no location")):
        get_data("digits:/tmp")
    with pytest.raises(DataError, match=re.escape("Bad options ['n'] for data set 'digits'")):
        get_data("digits", n=3)
    with pytest.raises(DataError, match=re.escape("limit must be a positive number")):
        get_data("digits", limit=0)


def test_synthetic() -> None:
    data = get_data("synthetic", input_shape=(2, 8, 8), n=200, num_classes=3, seed=1)
    assert (len(data.train), len(data.test), data.num_classes) == (160, 40, 3)
    labels = data.train.tensors[1]
    assert set(labels.tolist()) == {0, 1, 2}
    assert int(torch.bincount(labels).min()) >= 20  # roughly balanced classes
    same = get_data("synthetic", input_shape=(2, 8, 8), n=200, num_classes=3, seed=1)
    other = get_data("synthetic", input_shape=(2, 8, 8), n=200, num_classes=3, seed=2)
    assert torch.equal(same.train.tensors[1], labels)
    assert not torch.equal(other.train.tensors[0], data.train.tensors[0])


def test_read_idx(idx_folder: Path) -> None:
    labels = read_idx(idx_folder / "t10k-labels-idx1-ubyte")
    assert labels.tolist() == [3, 2, 1, 0, 3]
    assert read_idx(idx_folder / "train-images-idx3-ubyte.gz").shape == (12, 28, 28)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match=re.escape(f"'{bad}' is not an IDX file")):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 4)
    message = (
        f"IDX file '{short}' declares shape (10,) (18 bytes) but has 12 bytes; "
        "the file is truncated or corrupt."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        read_idx(short)


def test_mnist_folder(idx_folder: Path) -> None:
    data = get_data(f"mnist:{idx_folder}", input_shape=(3, 32, 32))
    assert (len(data.train), len(data.test), data.num_classes) == (12, 5, 4)
    assert data.train.tensors[0].shape == (12, 3, 32, 32)
    assert data.test.tensors[1].tolist() == [3, 2, 1, 0, 3]
    native = get_data(f"mnist:{idx_folder}", input_shape=(1, 28, 28), limit=4)
    raw = torch.from_numpy(read_idx(idx_folder / "train-images-idx3-ubyte.gz")[:4].copy())
    inputs = native.train.tensors[0][:, 0]
    # Normalisation is affine, so the raw pixel order is kept.
    assert torch.equal(inputs.flatten().argsort(stable=True), raw.flatten().argsort(stable=True))


def test_mnist_folder_errors(tmp_path: Path, idx_folder: Path) -> None:
    with pytest.raises(DataError, match=re.escape("use 'mnist:/path/to/folder'")):
        get_data("mnist")
    with pytest.raises(DataError, match=re.escape(f"IDX folder '{tmp_path / 'no'}' does not")):
        get_data(f"mnist:{tmp_path / 'no'}")
    (idx_folder / "t10k-labels-idx1-ubyte").unlink()
    message = f"IDX folder '{idx_folder}' lacks t10k-labels-idx1-ubyte[.gz]. Expected the four"
    with pytest.raises(DataError, match=re.escape(message)):
        get_data(f"mnist:{idx_folder}")


def test_fashion_mnist_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "package not installed")

    monkeypatch.setattr(data_module.subprocess, "run", absent)
    message = (
        "The package dataset-fashion-mnist is not installed. Install it with 'apt-get install "
        "dataset-fashion-mnist', or point at a folder of Fashion-MNIST IDX files with "
        "'mnist:/path/to/folder'."
    )
    with pytest.raises(DataError, match=re.escape(message)):
        get_data("fashion-mnist")


@pytest.mark.skipif(not _has_fashion_mnist(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package() -> None:
    data = get_data("fashion-mnist", input_shape=(1, 32, 32), limit=100)
    assert (len(data.train), len(data.test), data.num_classes) == (100, 100, 10)
    assert data.train.tensors[0].shape == (100, 1, 32, 32)
    assert data.name == "fashion-mnist"


def _write_cifar(folder: Path, records: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index, name in enumerate(
        [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    ):
        labels = (np.arange(records) + index) % 10
        pixels = rng.integers(0, 256, (records, 3072))
        rows = np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8)
        (folder / name).write_bytes(rows.tobytes())


def test_cifar10_binary(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-bin", records=3)
    data = get_data(f"cifar10:{tmp_path}", input_shape=(3, 32, 32))
    assert (len(data.train), len(data.test), data.num_classes) == (15, 3, 8)
    assert data.train.tensors[1][:6].tolist() == [0, 1, 2, 1, 2, 3]
    grey = get_data(
        f"cifar10:{tmp_path / 'cifar-10-batches-bin'}", input_shape=(1, 16, 16), limit=4
    )
    assert (len(grey.train), len(grey.test)) == (4, 3)
    assert grey.train.tensors[0].shape == (4, 1, 16, 16)


def test_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"CIFAR-10 folder '{tmp_path / 'x'}' does not")):
        get_data(f"cifar10:{tmp_path / 'x'}")
    (tmp_path / "data_batch_1").write_bytes(b"pickled")
    with pytest.raises(DataError) as info:
        get_data(f"cifar10:{tmp_path}")
    assert str(info.value) == (
        f"CIFAR-10 folder '{tmp_path}' lacks data_batch_1.bin, data_batch_2.bin, "
        "data_batch_3.bin, data_batch_4.bin, data_batch_5.bin, test_batch.bin. It holds the "
        "pickled 'python version', which amc never unpickles. Download the 'CIFAR-10 binary "
        "version' (cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html, "
        "extract it, and pass 'cifar10:/path/to/cifar-10-batches-bin'."
    )
    with pytest.raises(DataError, match=re.escape("Data set 'cifar10' needs a folder.")):
        get_data("cifar10")


@pytest.fixture
def data_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "amc_test_datasets.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset
            from amc.zoo import DataSplits

            def pair(input_shape):
                x = torch.zeros(20, *input_shape)
                return TensorDataset(x, torch.arange(20) % 6), TensorDataset(x[:4], torch.zeros(4))

            def splits():
                ds = TensorDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
                return DataSplits(ds, ds, 2, (1, 4, 4), "mine")

            def wrong():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "amc_test_datasets"


def test_callable_spec(data_module_name: str) -> None:
    data = get_data(f"{data_module_name}:pair", input_shape=(2, 5, 5))
    assert (len(data.train), len(data.test), data.num_classes) == (20, 4, 6)
    assert (data.input_shape, data.name) == ((2, 5, 5), f"{data_module_name}:pair")
    limited = get_data(f"{data_module_name}:pair", input_shape=(2, 5, 5), limit=3)
    assert (len(limited.train), len(limited.test)) == (3, 3)
    assert get_data(f"{data_module_name}:splits").name == "mine"
    assert isinstance(get_data(f"{data_module_name}:splits").train, TensorDataset)


def test_callable_spec_errors(data_module_name: str) -> None:
    with pytest.raises(DataError) as info:
        get_data(f"{data_module_name}:wrong")
    assert str(info.value) == (
        f"Data spec '{data_module_name}:wrong' returned int; expected DataSplits or a "
        "(train, test) pair of datasets of (input, label) samples."
    )
    with pytest.raises(DataError, match=re.escape("Expected a data spec of the form")):
        get_data("no_such_pkg_xyz:make")


def test_digits_match_scikit_learn_without_importing_it() -> None:
    """The stored split and the CSV read are scikit-learn's own split of its digits."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    sklearn_made = data_module._splits(
        "digits",
        (torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(test_x).unsqueeze(1)),
        (torch.from_numpy(train_y), torch.from_numpy(test_y)),
        (1, 12, 12),
        None,
        scale=16.0,
    )
    ours = get_data("digits", input_shape=(1, 12, 12))
    for part in ("train", "test"):
        mine, theirs = getattr(ours, part).tensors, getattr(sklearn_made, part).tensors
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    code = (
        "import sys; from amc.zoo.data import get_data; "
        "get_data('digits', input_shape=(1, 8, 8)); print('sklearn' in sys.modules)"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr
