"""How important each channel (or weight) is: channel criteria and N:M / magnitude selection.

Channel criteria are Torch-Pruning's group importances, scored over every layer the unit
couples: ``l1`` and ``l2`` (group weight magnitude), ``bn_scale`` (|gamma| of the norm layers,
Network Slimming), ``taylor`` (first-order Taylor, weight x gradient, from a few batches) and
``activation`` (mean absolute activation entering the consuming layers, from a few batches).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import unknown_name

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation")
DATA_CRITERIA = ("taylor", "activation")


def make_importance(criterion: str) -> tp.importance.Importance:
    """The Torch-Pruning importance object for ``criterion``."""
    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance()
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    if criterion == "activation":
        return tp.importance.ActivationImportance()
    raise unknown_name("criterion", criterion, CRITERIA)


@contextlib.contextmanager
def gathered(
    model: nn.Module,
    importance: tp.importance.Importance,
    criterion: str,
    batches: Iterable[Any],
) -> Iterator[None]:
    """Run ``batches`` through ``model`` to collect what a data-driven criterion needs.

    ``batches`` yields inputs or ``(inputs, labels)`` pairs. Without labels the Taylor
    criterion uses the model's own predictions as targets (self-distillation), so it still
    ranks channels by their effect on the output.
    """
    if criterion not in DATA_CRITERIA:
        yield
        return
    was_training = model.training
    model.eval()
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for batch in batches:
                inputs, labels = _split(batch)
                logits = model(inputs)
                if labels is None:
                    labels = logits.detach().argmax(-1)
                nn.functional.cross_entropy(logits, labels).backward()
        yield
        model.zero_grad(set_to_none=True)
    else:
        assert isinstance(importance, tp.importance.ActivationImportance)
        with importance.compute_importance(model), torch.no_grad():
            for batch in batches:
                model(_split(batch)[0])
        yield
        for module in model.modules():
            if hasattr(module, "_importance"):
                del module._importance
    model.train(was_training)


def channels_to_remove(scores: torch.Tensor | None, channels: int, keep: int) -> list[int]:
    """Indices of the ``channels - keep`` least important channels (ties: lower index kept)."""
    if keep >= channels:
        return []
    if scores is None:  # a group with no weights to score: keep the first channels
        return list(range(keep, channels))
    scores = scores.detach().float().cpu().flatten()
    if scores.numel() != channels and scores.numel() % channels == 0:
        # scored on a flattened consumer (conv -> flatten -> linear): fold back per channel
        scores = scores.reshape(channels, -1).mean(1)
    if scores.numel() != channels:
        raise ValueError(f"got {scores.numel()} importance scores for {channels} channels")
    order = torch.argsort(scores, stable=True)
    return sorted(int(i) for i in order[: channels - keep])


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A 0/1 mask keeping the ``n`` largest of every ``m`` consecutive weights along the input.

    For a Conv weight ``[out, in, kh, kw]`` the groups run along ``in`` at each kernel position
    (as NVIDIA's ASP does), for a Linear weight ``[out, in]`` along ``in``.
    """
    if weight.dim() == 2:
        grouped = weight.detach().abs().reshape(-1, m)
        mask = _keep_top(grouped, n).reshape(weight.shape)
    else:
        moved = weight.detach().abs().movedim(1, -1)  # [out, kh, kw, in]
        mask = _keep_top(moved.reshape(-1, m), n).reshape(moved.shape).movedim(-1, 1)
    return mask.to(weight.dtype)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask zeroing the ``sparsity`` fraction of smallest-magnitude weights."""
    count = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight)
    if count > 0:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask.view(-1)[order[:count]] = 0
    return mask


def _keep_top(grouped: torch.Tensor, n: int) -> torch.Tensor:
    top = torch.topk(grouped, n, dim=1, sorted=False).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, tuple | list):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None
