from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import amc.train as train_module
from amc.checkpoint import read_metadata
from amc.errors import DataError, UnknownNameError
from amc.train import (
    EvalMetrics,
    NonFiniteLossError,
    evaluate,
    finetune,
    pretrained,
    recalibrate_bn,
    train,
)
from amc.zoo import get_data


def _tiny(in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


@pytest.fixture(scope="module")
def data():
    return get_data("synthetic", input_shape=(1, 8, 8), n=320, num_classes=3)


def test_train_steps_and_epochs(data) -> None:
    model = _tiny()
    result = train(model, data, epochs=2, lr=0.05, batch_size=32, progress=False)
    assert (result.steps, result.epochs) == (16, 2.0)  # 256 train samples / 32 per batch x 2
    assert result.seconds > 0 and result.loss > 0
    assert not model.training
    by_steps = train(_tiny(), data, steps=5, batch_size=32, optimizer="adam", progress=False)
    assert (by_steps.steps, by_steps.epochs) == (5, 5 / 8)


def test_train_learns_and_is_reproducible(data) -> None:
    first, second = _tiny(), _tiny()
    before = evaluate(first, data.train).loss
    train(first, data, epochs=4, lr=0.1, batch_size=32, seed=1, progress=False)
    train(second, data, epochs=4, lr=0.1, batch_size=32, seed=1, progress=False)
    assert evaluate(first, data.train).loss < before
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_train_argument_errors(data) -> None:
    with pytest.raises(
        ValueError, match=re.escape("train() needs exactly one of epochs and steps")
    ):
        train(_tiny(), data, epochs=1, steps=1, progress=False)
    message = "Unknown optimizer 'adamw'. Did you mean 'adam'? Expected one of: adam, sgd."
    with pytest.raises(UnknownNameError, match=re.escape(message)):
        train(_tiny(), data, steps=1, optimizer="adamw", progress=False)


def test_finetune(data) -> None:
    result = finetune(_tiny(), data, steps=3, lr=0.01, batch_size=16)
    assert result.steps == 3
    assert result.loss > 0


def test_finetune_nan_loss(data) -> None:
    model = _tiny()
    with torch.no_grad():
        model[5].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError) as info:
        finetune(model, data, steps=3, lr=0.01, batch_size=16)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.reason, info.value.step) == ("nan_loss", 1)
    assert str(info.value) == "Loss became nan at step 1; lower the learning rate."


def _one_hot_data() -> TensorDataset:
    logits = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])] * 2.0
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 0, 1])  # first 6 right, last 4 wrong
    return TensorDataset(logits, labels)


def test_evaluate_exact() -> None:
    dataset = _one_hot_data()
    metrics = evaluate(nn.Identity(), dataset, batch_size=4)
    expected_loss = float(F.cross_entropy(dataset.tensors[0], dataset.tensors[1]))
    assert metrics == EvalMetrics(accuracy=0.6, loss=pytest.approx(expected_loss), n=10)
    assert evaluate(nn.Identity(), dataset, batch_size=4, max_batches=2).n == 8
    loader = DataLoader(dataset, batch_size=5)
    assert evaluate(nn.Identity(), loader).accuracy == 0.6


def test_evaluate_fidelity_without_labels() -> None:
    inputs = _one_hot_data().tensors[0]
    flipped = nn.Sequential()  # reference predicting class (k + 1) % 3 for inputs of class k
    flipped.append(nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        flipped[0].weight.copy_(torch.eye(3).roll(1, dims=0))
    flipped[0].weight.data[:, :] = flipped[0].weight.data
    reference = nn.Identity()
    metrics = evaluate(flipped, TensorDataset(inputs), reference=reference)
    assert (metrics.accuracy, metrics.fidelity, metrics.n, metrics.labelled) == (
        0.0,
        0.0,
        10,
        False,
    )
    same = evaluate(nn.Identity(), TensorDataset(inputs), reference=reference)
    assert (same.accuracy, same.fidelity, same.labelled) == (1.0, 1.0, False)
    labelled = evaluate(nn.Identity(), _one_hot_data(), reference=flipped)
    assert (labelled.accuracy, labelled.fidelity, labelled.labelled) == (0.6, 0.0, True)


def test_evaluate_errors_and_mode() -> None:
    model = nn.Sequential(nn.Identity())
    model.train()
    message = "Cannot evaluate on unlabelled data without a reference model"
    with pytest.raises(DataError, match=re.escape(message)):
        evaluate(model, TensorDataset(torch.zeros(2, 3)))
    assert model.training  # mode restored even on error
    with pytest.raises(DataError, match=re.escape("Cannot evaluate on an empty data set")):
        evaluate(model, _one_hot_data(), max_batches=0)


def test_recalibrate_bn() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    model[1].running_mean.fill_(100.0)
    inputs = torch.randn(8, 2, 3, 3) * 3 + 1
    expected = model[0](inputs).mean(dim=(0, 2, 3)).detach()
    count = recalibrate_bn(model, TensorDataset(inputs, torch.zeros(8)), batches=2, batch_size=4)
    assert count == 1
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert model[1].momentum == 0.1
    assert int(model[1].num_batches_tracked) == 2
    assert not model.training


@pytest.fixture
def tiny_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "amc_test_tiny.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def tiny(num_classes, in_channels):
                return nn.Sequential(
                    nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(4, num_classes),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "amc_test_tiny:tiny"


def test_pretrained_trains_once(tmp_path: Path, tiny_spec: str, monkeypatch) -> None:
    cache = tmp_path / "baselines"
    model, path = pretrained(
        tiny_spec, "synthetic", input_shape=(1, 8, 8), cache_dir=cache, epochs=1, progress=False
    )
    assert path.parent == cache and path.suffix == ".safetensors"
    assert path.name.startswith("amc_test_tiny_tiny-synthetic-1x8x8-e1-s0-")
    assert [p.name for p in cache.iterdir()] == [path.name]
    metadata = read_metadata(path)
    assert (metadata["format"], metadata["num_classes"], metadata["epochs"]) == (
        "amc.baseline/1",
        "10",
        "1",
    )
    assert 0.0 <= float(metadata["test_accuracy"]) <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained retrained a cached baseline")

    monkeypatch.setattr(train_module, "train", no_training)
    again, same_path = pretrained(
        tiny_spec, "synthetic", input_shape=(1, 8, 8), cache_dir=cache, epochs=1, progress=False
    )
    assert same_path == path
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = train_module.baseline_path(tiny_spec, "synthetic", (1, 8, 8), 1, 1, cache)
    assert other != path


def test_recalibrate_bn_without_bn_layers() -> None:
    assert recalibrate_bn(nn.Linear(2, 2), TensorDataset(torch.zeros(4, 2)), batches=1) == 0
    with pytest.raises(ValueError, match=re.escape("recalibrate_bn needs batches >= 1, got 0")):
        recalibrate_bn(nn.Linear(2, 2), TensorDataset(torch.zeros(4, 2)), batches=0)


def test_recalibrate_bn_on_unlabelled_inputs() -> None:
    model = nn.BatchNorm1d(2)
    inputs = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert recalibrate_bn(model, TensorDataset(inputs), batches=1, batch_size=2) == 1
    assert model.running_mean.tolist() == [2.0, 4.0]
    with pytest.raises(DataError, match=re.escape("Cannot train on unlabelled data")):
        finetune(model, TensorDataset(inputs), steps=1, batch_size=2)
