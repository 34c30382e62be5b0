"""Training, brief fine-tuning, evaluation (accuracy or fidelity) and BN recalibration."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from amc.checkpoint import load_weights, read_metadata, save_weights
from amc.errors import CheckpointError, DataError, unknown_name
from amc.zoo import DataSplits, get_data, resolve_model

BASELINE_FORMAT = "amc.baseline/1"
OPTIMIZERS = ("sgd", "adam")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (a diverged fine-tune, not bad user input).

    Attributes:
        reason: always ``"nan_loss"``, the status evaluators record.
        step: the 1-based optimiser step at which the loss was not finite.
        loss: the offending loss value.
    """

    reason = "nan_loss"

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"Loss became {loss} at step {step}; lower the learning rate.")
        self.step = step
        self.loss = loss


@dataclass(frozen=True)
class EvalMetrics:
    """Result of :func:`evaluate`.

    Attributes:
        accuracy: top-1 accuracy on the labels; without labels, agreement with the reference.
        loss: mean cross entropy against the labels (or the reference's argmax without labels).
        n: number of samples evaluated.
        fidelity: top-1 agreement with the reference model, or None without one.
        labelled: whether ``accuracy`` and ``loss`` are against true labels.
    """

    accuracy: float
    loss: float
    n: int
    fidelity: float | None = None
    labelled: bool = True


@dataclass(frozen=True)
class TrainResult:
    """Result of :func:`train`: optimiser steps, epochs covered, final loss and wall time."""

    steps: int
    epochs: float
    loss: float
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """Result of :func:`finetune`: optimiser steps, final loss and wall time."""

    steps: int
    loss: float
    seconds: float


def train(
    model: nn.Module,
    data: DataSplits | Dataset,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float = 0.05,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    optimizer: str = "sgd",
    weight_decay: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on the train split with a cosine learning-rate schedule.

    Args:
        model: the module to train (left in eval mode, on ``device``).
        data: DataSplits (its train split is used) or a dataset of ``(input, label)``.
        epochs: passes over the train split; give this or ``steps``.
        steps: optimiser steps; give this or ``epochs``.
        lr: peak learning rate, decayed to 0 along a cosine.
        batch_size: samples per step (incomplete last batches are dropped).
        device: where to train.
        seed: seeds shuffling and any randomness in the model (dropout).
        optimizer: ``"sgd"`` (momentum 0.9, Nesterov, weight decay 5e-4) or ``"adam"``.
        weight_decay: overrides the optimiser's default weight decay.
        progress: show a progress bar with the running loss.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.

    Example:
        >>> data = get_data("digits", input_shape=(1, 32, 32))
        >>> model = resolve_model("resnet20", num_classes=10, in_channels=1)
        >>> train(model, data, epochs=1, progress=False).steps
        22
    """
    dataset = data.train if isinstance(data, DataSplits) else data
    if (epochs is None) == (steps is None):
        raise ValueError("train() needs exactly one of epochs and steps")
    steps_per_epoch = max(1, len(dataset) // batch_size)  # type: ignore[arg-type]
    total = steps if steps is not None else int(epochs or 0) * steps_per_epoch
    start = time.perf_counter()
    loss = _fit(
        model,
        dataset,
        total,
        lr,
        batch_size,
        device,
        seed,
        optimizer,
        weight_decay,
        progress,
        "train",
    )
    return TrainResult(total, total / steps_per_epoch, loss, time.perf_counter() - start)


def finetune(
    model: nn.Module,
    data: DataSplits | Dataset,
    steps: int,
    lr: float = 0.01,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    optimizer: str = "sgd",
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place for a few steps (a pruned model's brief recovery).

    ``on_step(step)`` is called after every optimiser step (a Ray worker uses it to let a
    waiting latency measurement have the device between steps).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (``reason == "nan_loss"``).

    Example:
        >>> finetune(model, get_data("digits", input_shape=(1, 32, 32)), steps=5).steps
        5
    """
    dataset = data.train if isinstance(data, DataSplits) else data
    start = time.perf_counter()
    loss = _fit(
        model, dataset, steps, lr, batch_size, device, seed, optimizer, None, progress,
        "finetune", on_step,
    )  # fmt: skip
    return FinetuneResult(steps, loss, time.perf_counter() - start)


def _fit(
    model: nn.Module,
    dataset: Dataset,
    steps: int,
    lr: float,
    batch_size: int,
    device: str | torch.device,
    seed: int,
    optimizer: str,
    weight_decay: float | None,
    progress: bool,
    desc: str,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """The shared training loop; returns the mean loss of the last (up to) 20 steps."""
    if optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    model.to(device)
    params = [param for param in model.parameters() if param.requires_grad]
    if optimizer == "sgd":
        decay = 5e-4 if weight_decay is None else weight_decay
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=decay
        )
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay or 0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))
    )
    recent: list[float] = []
    batches = _shuffled_batches(dataset, batch_size, seed)
    with (
        torch.random.fork_rng(devices=[]),
        tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step") as bar,
    ):
        torch.manual_seed(seed)
        model.train()
        for step in range(1, steps + 1):
            inputs, labels = _split_batch(next(batches))
            if labels is None:
                raise DataError(
                    "Cannot train on unlabelled data: expected (input, label) samples."
                )
            logits = model(inputs.to(device))
            loss = F.cross_entropy(logits, labels.to(device))
            value = float(loss.detach())
            if not math.isfinite(value):
                model.eval()
                raise NonFiniteLossError(step, value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            recent = (recent + [value])[-20:]
            bar.update(1)
            if on_step is not None:
                on_step(step)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    model.eval()
    return sum(recent) / len(recent) if recent else float("nan")


def _shuffled_batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[Any]:
    """Endless reshuffled epochs of full batches (a partial one only for tiny datasets)."""
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DataError("Cannot train on an empty data set.")
    generator = torch.Generator().manual_seed(seed)
    while True:
        loader = DataLoader(
            dataset, batch_size, shuffle=True, generator=generator, drop_last=size >= batch_size
        )
        yield from loader


def _as_loader(data: DataSplits | Dataset | DataLoader, split: str, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, DataSplits):
        return data.loader(split, batch_size=batch_size)
    return DataLoader(data, batch_size=batch_size)


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels or None) from a tensor, a 1-tuple or an (inputs, labels, ...) batch."""
    if torch.is_tensor(batch):
        return batch, None
    if isinstance(batch, Sequence) and len(batch) == 1:
        return batch[0], None
    return batch[0], batch[1]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset_or_loader: DataSplits | Dataset | DataLoader,
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    reference: nn.Module | None = None,
    batch_size: int = 256,
) -> EvalMetrics:
    """Accuracy and loss of ``model`` (and fidelity to ``reference``) on held-out data.

    Args:
        model: the model to score (evaluated in eval mode; its mode is restored afterwards).
        dataset_or_loader: a dataset or loader of ``(input, label)`` or of inputs only, or
            DataSplits (its test split is used).
        device: where to run.
        max_batches: stop after this many batches.
        reference: e.g. the dense model; gives ``fidelity``, and stands in for missing labels.
        batch_size: batch size when given a dataset.

    Raises:
        DataError: no samples, or no labels and no reference.

    Example:
        >>> metrics = evaluate(model, data.test, max_batches=2)
        >>> metrics.n
        360
    """
    loader = _as_loader(dataset_or_loader, "test", batch_size)
    models = [model] + ([reference] if reference is not None else [])
    modes = [module.training for module in models]
    for module in models:
        module.to(device).eval()
    correct = agree = total = 0
    loss_sum = 0.0
    labelled = True
    try:
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, labels = _split_batch(batch)
            logits = model(inputs.to(device))
            predictions = logits.argmax(dim=1)
            if reference is not None:
                reference_predictions = reference(inputs.to(device)).argmax(dim=1)
                agree += int((predictions == reference_predictions).sum())
            if labels is None:
                if reference is None:
                    raise DataError(
                        "Cannot evaluate on unlabelled data without a reference model; pass "
                        "reference=<the dense model> to measure fidelity, or labelled data."
                    )
                labelled = False
                labels = reference_predictions
            labels = labels.to(device)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((predictions == labels).sum())
            total += len(labels)
    finally:
        for module, mode in zip(models, modes, strict=True):
            module.train(mode)
    if total == 0:
        raise DataError("Cannot evaluate on an empty data set (or max_batches=0).")
    fidelity = agree / total if reference is not None else None
    return EvalMetrics(correct / total, loss_sum / total, total, fidelity, labelled)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: DataSplits | Dataset | DataLoader,
    batches: int = 10,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> int:
    """Adaptive BN: re-estimate every BatchNorm's running statistics from a few train batches.

    Running statistics are reset and accumulated as a plain average (``momentum=None``) with
    only the BN layers in train mode; the model ends in eval mode.

    Returns:
        The number of BatchNorm layers recalibrated.

    Example:
        >>> recalibrate_bn(resolve_model("resnet20"), get_data("digits"), batches=2)
        21
    """
    norms = [
        module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    if batches < 1:
        raise ValueError(f"recalibrate_bn needs batches >= 1, got {batches}")
    if not norms:
        return 0
    model.to(device).eval()
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        if isinstance(data, DataLoader):
            source: Any = iter(data)
        else:
            source = _shuffled_batches(
                data.train if isinstance(data, DataSplits) else data, batch_size, seed
            )
        for _, batch in zip(range(batches), source, strict=False):
            model(_split_batch(batch)[0].to(device))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()
    return len(norms)


def baseline_path(
    model_spec: str,
    data_spec: str,
    input_shape: Sequence[int],
    epochs: int,
    seed: int,
    cache_dir: str | Path = "runs/baselines",
    **settings: Any,
) -> Path:
    """The cache file of a baseline: readable names plus a hash of every training setting."""
    shape = "x".join(str(int(size)) for size in input_shape)
    key = json.dumps(
        [model_spec, data_spec, shape, epochs, seed, sorted(settings.items())], default=str
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    slug = "-".join(
        re.sub(r"[^A-Za-z0-9_.]+", "_", part).strip("_")[:40] for part in (model_spec, data_spec)
    )
    return Path(cache_dir) / f"{slug}-{shape}-e{epochs}-s{seed}-{digest}.safetensors"


def pretrained(
    model_spec: str,
    data_spec: str,
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    cache_dir: str | Path = "runs/baselines",
    epochs: int = 4,
    seed: int = 0,
    progress: bool = True,
    lr: float = 0.05,
    batch_size: int = 64,
    optimizer: str = "sgd",
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, Path]:
    """A trained baseline: trained once, cached as safetensors, reloaded on later calls.

    The file name is derived from the model and data specs, input shape, epochs, seed and a
    hash of the other settings; its metadata records the test accuracy and training time.

    Returns:
        ``(model in eval mode, path of the weights file)``.

    Example:
        >>> model, path = pretrained("resnet20", "digits", input_shape=(1, 32, 32), epochs=4)
        >>> path.name  # doctest: +SKIP
        'resnet20-digits-1x32x32-e4-s0-3f2a9c1d.safetensors'
    """
    shape = tuple(int(size) for size in input_shape)
    path = baseline_path(
        model_spec,
        data_spec,
        shape,
        epochs,
        seed,
        cache_dir,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        **({"model_kwargs": dict(model_kwargs)} if model_kwargs else {}),
    )
    model_options: dict[str, Any] = {
        "in_channels": shape[0],
        "image_size": shape[1],
        **dict(model_kwargs or {}),
    }
    if path.is_file():
        metadata = read_metadata(path)
        if metadata.get("format") != BASELINE_FORMAT:
            raise CheckpointError(
                f"Baseline {str(path)!r} has format {metadata.get('format')!r}, expected "
                f"{BASELINE_FORMAT!r}; delete the file to retrain it."
            )
        model = resolve_model(
            model_spec, num_classes=int(metadata["num_classes"]), **model_options
        )
        return load_weights(model, path).eval(), path
    data = get_data(data_spec, input_shape=shape)
    model = resolve_model(model_spec, num_classes=data.num_classes, **model_options)
    result = train(
        model,
        data,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        device=device,
        seed=seed,
        optimizer=optimizer,
        progress=progress,
    )
    metrics = evaluate(model, data.test, device=device)
    metadata = {
        "format": BASELINE_FORMAT,
        "model": model_spec,
        "data": data_spec,
        "input_shape": json.dumps(list(shape)),
        "num_classes": str(data.num_classes),
        "epochs": str(epochs),
        "seed": str(seed),
        "test_accuracy": f"{metrics.accuracy:.6f}",
        "train_seconds": f"{result.seconds:.3f}",
    }
    save_weights(model, path, metadata=metadata)
    return model.to("cpu").eval(), path
