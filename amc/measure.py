"""Measure a model: wall-clock latency on a device, FLOPs, parameter count and stored size.

Latency comes from :class:`torch.utils.benchmark.Timer` (which synchronises CUDA around every
timed block), FLOPs from fvcore's :class:`~fvcore.nn.FlopCountAnalysis`. Weights wrapped by
:mod:`torch.nn.utils.parametrize` (the masks amc uses for N:M sparsity) are measured through
their effective value, ``module.weight``.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    >>> x = torch.randn(2, 8)
    >>> count_flops(net, x), count_params(net)
    (64, 36)
    >>> measure_latency(net, x, min_run_time=0.05).median_ms > 0
    True
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, overload

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import benchmark

from amc.errors import ConfigError

__all__ = [
    "NM_PATTERNS",
    "LatencyStats",
    "SizeStats",
    "compare",
    "count_flops",
    "count_params",
    "measure_interleaved",
    "measure_latency",
    "model_size",
    "steady_allocator",
]

# Candidate N:M patterns in order of preference (2:4 is what sparse tensor cores run).
NM_PATTERNS: tuple[tuple[int, int], ...] = ((2, 4), (1, 4), (4, 8), (2, 8), (1, 8))

Inputs = torch.Tensor | Sequence[Any]


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass, over ``runs`` timed measurements.

    Each measurement is the mean of a block of back-to-back forward passes (the block size is
    chosen by ``Timer.blocked_autorange`` so that timer overhead is negligible).
    """

    median_ms: float
    iqr_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    device: str
    threads: int

    @property
    def iqr_over_median(self) -> float:
        """Relative spread, the noise figure of the measurement (0.02 is 2%)."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyStats:
        """Inverse of :meth:`to_json`."""
        return cls(
            median_ms=float(data["median_ms"]),
            iqr_ms=float(data["iqr_ms"]),
            mean_ms=float(data["mean_ms"]),
            runs=int(data["runs"]),
            batch_size=int(data["batch_size"]),
            device=str(data["device"]),
            threads=int(data["threads"]),
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device string ('cpu', 'cuda', 'cuda:N') and return the torch.device."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"Unknown device {str(device)!r}. Expected 'cpu', 'cuda' or 'cuda:N'."
        ) from e
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ConfigError(
            f"Unsupported device {str(device)!r}. Expected 'cpu', 'cuda' or 'cuda:N'."
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"Device {str(device)!r} was requested but CUDA is not available on this machine. "
            "Use device='cpu', or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch."
        )
    count = torch.cuda.device_count()
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(
            f"Device {str(device)!r} was requested but only {count} CUDA device(s) are "
            f"visible (cuda:0 to cuda:{count - 1}). Use one of them or device='cpu'."
        )
    return torch.device("cuda", index)


# glibc's mallopt parameters and the values :func:`steady_allocator` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def steady_allocator() -> bool:
    """Keep glibc's heap from handing activation buffers back to the kernel between passes.

    With glibc's default heuristics a CPU forward pass allocates every buffer above the
    mmap threshold (128 KiB, raised only by what the process happened to free before) with
    ``mmap`` and returns it with ``munmap`` (or trims the heap top), so each pass of a CNN
    at batch 32 page-faults its activations in again: thousands of minor faults a pass, a
    cost that grows with activation size and depends on the process's history. On the
    project's 2-core VM resnet20 (1x28x28, batch 32, one thread) ran 42 ms a pass with ~5600
    faults in a fresh process and 27 ms with none once it had freed a few 24-MB blocks (as
    loading a data set does, which raises the thresholds); a uniform plan's ratio to the
    dense model read 0.26 in the one state and 0.44 in the other, 0.43 in both with this
    (``experiments/bench_allocator.py``). Fixing both thresholds
    (mmap 32 MiB, trim 1 GiB) makes every process time the same thing, the steady state a
    serving process or jemalloc/tcmalloc reaches: no faults after the warm-up passes. The
    cost is that freed memory up to 1 GiB stays with the process.

    Called by every CPU timing of this module, once per process; a no-op (returns False)
    outside glibc or with ``AMC_STEADY_ALLOCATOR=0`` in the environment.
    """
    if os.environ.get("AMC_STEADY_ALLOCATOR", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def measure_latency(
    model: nn.Module,
    example_inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    warmup: int = 5,
    min_run_time: float = 0.5,
    repeats: int = 20,
) -> LatencyStats:
    """Measure the forward latency of ``model`` on ``device``.

    The model runs in eval mode under :func:`torch.inference_mode`, on a copy moved to the device
    when it is not already there (the caller's model is never moved). After ``warmup`` untimed
    passes, :meth:`torch.utils.benchmark.Timer.blocked_autorange` times blocks of passes for at
    least ``min_run_time`` seconds; more blocks are timed until there are ``repeats`` of them.
    The Timer synchronises CUDA around each block, so GPU times are real. On a CPU the
    process's allocator is first put in a steady state (:func:`steady_allocator`).

    Args:
        model: the network; its training flag is restored afterwards.
        example_inputs: a tensor or a sequence of positional arguments.
        device: 'cpu', 'cuda' or 'cuda:N'.
        batch_size: if given, tensor inputs are repeated or cropped along dim 0 to this batch.
        threads: intra-op CPU threads while timing; default ``torch.get_num_threads()``.
        warmup: untimed forward passes before timing.
        min_run_time: seconds of timed blocks ``blocked_autorange`` collects at least.
        repeats: minimum number of timed blocks (``runs``).

    Returns:
        Median, IQR and mean per forward pass in milliseconds, and the conditions measured in.

    Raises:
        ConfigError: an unknown device, or CUDA requested where none is available.

    Example:
        >>> net = torch.nn.Linear(8, 4)
        >>> stats = measure_latency(net, torch.randn(1, 8), min_run_time=0.05, repeats=5)
        >>> stats.runs >= 5, stats.device
        (True, 'cpu')
    """
    if warmup < 0 or repeats < 1 or min_run_time <= 0:
        raise ValueError(
            f"Expected warmup >= 0, repeats >= 1 and min_run_time > 0; got warmup={warmup}, "
            f"repeats={repeats}, min_run_time={min_run_time}."
        )
    target, num_threads, args = _timing_inputs(example_inputs, device, batch_size, threads)
    batch = _batch_of(args)

    with _on_device(model, target) as runnable, _cuda_device(target), torch.inference_mode():
        for _ in range(warmup):
            runnable(*args)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        timer = benchmark.Timer(
            stmt="model(*args)",
            globals={"model": runnable, "args": args},
            num_threads=num_threads,
        )
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
        missing = repeats - len(measurement.raw_times)
        if missing > 0:
            number = measurement.number_per_run
            with torch_threads(num_threads):
                extra = [_time_block(runnable, args, number, target) for _ in range(missing)]
            measurement = benchmark.Measurement(
                number_per_run=number,
                raw_times=measurement.raw_times + extra,
                task_spec=measurement.task_spec,
            )
    return LatencyStats(
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        mean_ms=measurement.mean * 1e3,
        runs=len(measurement.raw_times),
        batch_size=batch,
        device=str(target),
        threads=num_threads,
    )


def measure_interleaved(
    models: Sequence[nn.Module],
    example_inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    warmup: int = 5,
    min_run_time: float = 0.5,
    rounds: int = 10,
    warm: bool = True,
) -> list[LatencyStats]:
    """Measure several models in alternation (A B B A A B ...), so machine drift hits all alike.

    Where :func:`measure_latency` times one model, this times ``models`` in ``rounds`` rounds,
    one block of forward passes per model per round, reversing the order every other round.
    A ratio of two of the returned medians is then measured under the same conditions: a busy
    neighbour or a frequency change during the measurement slows both models, not one. The
    whole call takes about ``min_run_time`` seconds (plus warm-up), shared out evenly: each
    block lasts about ``min_run_time / (rounds * len(models))``.

    A block that follows another model's block starts with one untimed pass of its own model:
    the first pass after a switch refills the caches the other model evicted, and where a
    block is only one or two passes long (a CNN at batch 32 on a CPU) that refill would be
    timed as the model's latency, more of a short block than of a long one. On this project's
    2-core VM (resnet20, 1x28x28, batch 32, a plan at 0.3 of dense, 0.5 s and 20 blocks per
    model: one dense pass a block) the ratio read 3.7% and 8.8% above that of 4x longer warm
    blocks in two quiet runs without it, -0.2% and 4.2% with it, for 1.5 s a measurement
    instead of 1.05 s; at batch 1 (blocks of many passes) 2.3% against 1.8%, at the same cost
    (``experiments/bench_measure_blocks.py``).

    Args:
        models: the networks (eval mode under :func:`torch.inference_mode`, as in
            :func:`measure_latency`; models not on ``device`` are copied there).
        example_inputs, device, batch_size, threads, warmup: as in :func:`measure_latency`.
        min_run_time: seconds of timed blocks, all models together.
        rounds: blocks per model (the statistics' sample size).
        warm: start a block that follows another model's with one untimed pass (see above).

    Returns:
        One :class:`LatencyStats` per model, in the order given.

    Example:
        >>> small, large = torch.nn.Linear(8, 4), torch.nn.Linear(8, 512)
        >>> a, b = measure_interleaved([small, large], torch.randn(1, 8), min_run_time=0.05)
        >>> a.runs == b.runs == 10
        True
    """
    if not models or warmup < 0 or rounds < 1 or min_run_time <= 0:
        raise ValueError(
            f"Expected at least one model, warmup >= 0, rounds >= 1 and min_run_time > 0; got "
            f"{len(models)} models, warmup={warmup}, rounds={rounds}, min_run_time={min_run_time}."
        )
    target, num_threads, args = _timing_inputs(example_inputs, device, batch_size, threads)
    block = min_run_time / (rounds * len(models))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_cuda_device(target))
        stack.enter_context(torch.inference_mode())
        runnables = [stack.enter_context(_on_device(model, target)) for model in models]
        timers = [
            benchmark.Timer(
                stmt="model(*args)", globals={"model": m, "args": args}, num_threads=num_threads
            )
            for m in runnables
        ]
        numbers, specs = [], []
        for runnable, timer in zip(runnables, timers, strict=True):
            once = timer.timeit(1)  # Timer.timeit warms up (2 passes), then times one
            for _ in range(max(0, warmup - 2)):
                runnable(*args)
            numbers.append(max(1, round(block / max(once.raw_times[0], 1e-9))))
            specs.append(once.task_spec)
        raw: list[list[float]] = [[] for _ in models]
        order = list(range(len(models)))
        previous = len(models) - 1  # the last model warmed up above
        with torch_threads(num_threads):
            for index in range(rounds):
                for which in order if index % 2 == 0 else reversed(order):
                    if warm and which != previous:  # start the block warm (see above)
                        runnables[which](*args)
                    raw[which].append(_time_block(runnables[which], args, numbers[which], target))
                    previous = which
    stats = []
    for spec, number, times in zip(specs, numbers, raw, strict=True):
        measurement = benchmark.Measurement(number_per_run=number, raw_times=times, task_spec=spec)
        stats.append(
            LatencyStats(
                median_ms=measurement.median * 1e3,
                iqr_ms=measurement.iqr * 1e3,
                mean_ms=measurement.mean * 1e3,
                runs=len(times),
                batch_size=_batch_of(args),
                device=str(target),
                threads=num_threads,
            )
        )
    return stats


def interleaved_ratio(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: Inputs,
    device: str | torch.device = "cpu",
    *,
    repeats: int = 1,
    **timing: Any,
) -> float:
    """``model``'s median latency over ``reference``'s, the two timed in alternation by
    :func:`measure_interleaved` (``timing``: its keyword arguments, e.g. ``batch_size``,
    ``threads``, ``min_run_time``, ``rounds``).

    ``repeats`` > 1: the median ratio of that many runs, which one run thrown off as a whole
    (a burst of other work during it, or during the warm-up that sizes its blocks) does not
    move.

    Example:
        >>> small, large = torch.nn.Linear(8, 4), torch.nn.Linear(8, 512)
        >>> ratio = interleaved_ratio(small, large, torch.randn(1, 8), min_run_time=0.05)
        >>> ratio > 0
        True
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1 (interleaved runs per reading), got {repeats}.")
    ratios = []
    for _ in range(repeats):
        cut, full = measure_interleaved([model, reference], example_inputs, device, **timing)
        ratios.append(cut.median_ms / full.median_ms)
    return statistics.median(ratios)


def time_call(
    module: Any,
    args: tuple[Any, ...],
    device: torch.device,
    *,
    block_s: float = 0.002,
    blocks: int = 3,
    warmup: int = 2,
) -> float:
    """Median seconds per call of ``module(*args)`` on ``device`` over ``blocks`` short blocks.

    For timing many small pieces (one layer at many widths, :mod:`amc.kernel_table`): the
    number of calls per block is sized from one timed call to last about ``block_s``.
    The caller sets threads and inference mode.
    """
    if device.type == "cpu":
        steady_allocator()
    for _ in range(warmup):
        module(*args)
    single = _time_block(module, args, 1, device)
    number = max(1, math.ceil(block_s / max(single, 1e-7)))
    return statistics.median(
        _time_block(module, args, number, device) / number for _ in range(blocks)
    )


def _time_block(model: Any, args: tuple[Any, ...], number: int, target: torch.device) -> float:
    """Seconds for ``number`` back-to-back passes, CUDA synchronised at both ends.

    ``Timer.timeit`` runs two untimed warm-up passes before every block it times; when many
    short blocks are taken (top-up blocks, interleaved rounds) that would triple the cost.
    """
    sync = torch.cuda.synchronize if target.type == "cuda" else None
    if sync:
        sync(target)
    start = time.perf_counter()
    for _ in range(number):
        model(*args)
    if sync:
        sync(target)
    return time.perf_counter() - start


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads, restoring the previous count (None: as is)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _timing_inputs(
    example_inputs: Inputs,
    device: str | torch.device,
    batch_size: int | None,
    threads: int | None,
) -> tuple[torch.device, int, tuple[Any, ...]]:
    """The device, thread count and positional inputs (at ``batch_size``, on the device)."""
    target = resolve_device(device)
    if target.type == "cpu":
        steady_allocator()
    num_threads = torch.get_num_threads() if threads is None else threads
    if num_threads < 1:
        raise ValueError(f"Expected threads >= 1, got {num_threads}.")
    args = _as_args(example_inputs)
    if batch_size is not None:
        args = tuple(_resize_batch(arg, batch_size) for arg in args)
    args = tuple(arg.to(target) if isinstance(arg, torch.Tensor) else arg for arg in args)
    return target, num_threads, args


def _as_args(example_inputs: Inputs) -> tuple[Any, ...]:
    """Turn a tensor or a sequence of inputs into positional arguments."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _resize_batch(arg: Any, batch_size: int) -> Any:
    """Repeat or crop a tensor along dim 0 to ``batch_size`` rows; leave non-tensors alone."""
    if batch_size < 1:
        raise ValueError(f"Expected batch_size >= 1, got {batch_size}.")
    if not isinstance(arg, torch.Tensor):
        return arg
    if arg.dim() == 0 or arg.shape[0] == 0:
        raise ValueError(
            f"Cannot set the batch size of an input of shape {tuple(arg.shape)}: "
            "expected a tensor with a non-empty batch dimension 0."
        )
    times = math.ceil(batch_size / arg.shape[0])
    if times > 1:
        arg = arg.repeat(times, *([1] * (arg.dim() - 1)))
    return arg[:batch_size].contiguous()


def _batch_of(args: tuple[Any, ...]) -> int:
    """Batch size of the first tensor argument (1 when there is none)."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.dim() > 0:
            return int(arg.shape[0])
    return 1


@contextlib.contextmanager
def _on_device(model: nn.Module, target: torch.device) -> Iterator[nn.Module]:
    """Yield the model in eval mode on ``target``: itself if already there, else a copy."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device == target for t in tensors):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)
    else:
        yield copy.deepcopy(model).to(target).eval()


def _cuda_device(target: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Make ``target`` the current CUDA device, so the Timer synchronises the right one."""
    if target.type == "cuda":
        return torch.cuda.device(target)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# FLOPs and parameters
# --------------------------------------------------------------------------------------------


@overload
def count_flops(
    model: nn.Module, example_inputs: Inputs, *, by_module: Literal[False] = False
) -> int: ...
@overload
def count_flops(
    model: nn.Module, example_inputs: Inputs, *, by_module: Literal[True]
) -> dict[str, int]: ...
def count_flops(
    model: nn.Module, example_inputs: Inputs, *, by_module: bool = False
) -> int | dict[str, int]:
    """Count FLOPs of one forward pass on ``example_inputs`` with fvcore.

    As in fvcore, one fused multiply-add counts as ONE FLOP (a ``Linear(i, o)`` on a batch of b
    costs ``b * i * o``). Only the ops fvcore counts contribute (conv, matmul, linear, einsum,
    norms, upsampling, adaptive pooling); element-wise ops, softmax and activations count zero.
    amc adds counts for ``scaled_dot_product_attention`` and the fused
    ``_native_multi_head_attention`` that ``nn.MultiheadAttention`` runs in inference, which
    fvcore would otherwise count as zero. Parametrized weights (masks) are traced through; the
    mask multiplication counts zero, so a masked layer costs what its dense shape costs.

    Args:
        model: the network, traced in eval mode without gradients (its mode is restored).
        example_inputs: a tensor or a sequence of positional arguments.
        by_module: return fvcore's per-module dict (qualified name -> FLOPs, '' for the model).

    Example:
        >>> count_flops(torch.nn.Conv2d(3, 8, 3), torch.randn(1, 3, 10, 10))  # 8*8*8*3*3*3 + 0
        13824
    """
    args = _as_args(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            analysis = (
                FlopCountAnalysis(model, args)
                .set_op_handle(**_EXTRA_FLOP_HANDLES)
                .unsupported_ops_warnings(False)
                .uncalled_modules_warnings(False)
                .tracer_warnings("none")
            )
            if by_module:
                return {name: int(flops) for name, flops in analysis.by_module().items()}
            return int(analysis.total())
    finally:
        model.train(was_training)


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """scaled_dot_product_attention: Q@K^T and attn@V, one FLOP per multiply-add."""
    query, key, value = (get_shape(v) for v in inputs[:3])
    *batch, length, dim = query
    source = key[-2]
    return math.prod(batch) * length * source * (dim + value[-1])


def _native_mha_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """Fused nn.MultiheadAttention: q/k/v projections, attention, output projection."""
    query, key = get_shape(inputs[0]), get_shape(inputs[1])
    embed = query[-1]
    if len(query) == 3:  # batched: (B, L, E)
        batch, length, source = query[0], query[1], key[1]
    else:  # unbatched: (L, E)
        batch, length, source = 1, query[0], key[0]
    projections = (2 * length + 2 * source) * embed * embed
    attention = 2 * length * source * embed
    return batch * (projections + attention)


_EXTRA_FLOP_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flop,
    "aten::_native_multi_head_attention": _native_mha_flop,
}


def count_params(model: nn.Module) -> int:
    """Count parameters once each, a parametrized tensor by the numel of its effective value.

    A weight shared by several modules counts once; a masked weight counts as one tensor, not as
    its original plus whatever its parametrization holds.

    Example:
        >>> count_params(torch.nn.Linear(8, 4))
        36
    """
    return sum(tensor.numel() for _, tensor, is_param in _effective_params(model) if is_param)


def _effective_params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """Yield (name, effective tensor, is_parameter) for each parameter and buffer, once each.

    Parametrized tensors are yielded as their effective value (``module.weight``); the originals,
    masks and anything else held inside parametrizations are not yielded.
    """
    inside: set[int] = set()
    seen_lists: set[int] = set()
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        assert isinstance(module.parametrizations, nn.ModuleDict)  # invariant of parametrize
        for tensor_name, plist in module.parametrizations.items():
            inside.update(id(t) for t in (*plist.parameters(), *plist.buffers()))
            if id(plist) in seen_lists:
                continue
            seen_lists.add(id(plist))
            qualified = f"{module_name}.{tensor_name}" if module_name else tensor_name
            with torch.no_grad():
                yield qualified, getattr(module, tensor_name).detach(), True
    seen: set[int] = set()
    for is_param, named in ((True, model.named_parameters()), (False, model.named_buffers())):
        for name, tensor in named:
            if id(tensor) in inside or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            yield name, tensor.detach(), is_param


# --------------------------------------------------------------------------------------------
# Stored size
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeStats:
    """Bytes a model takes, dense and as sparse formats would store it.

    Attributes:
        dense_bytes: every effective parameter and buffer at its dtype.
        stored_bytes: the same, with N:M weights in a compressed N:M format (values + metadata)
            and other weights more than half zeros in CSR; equals dense_bytes when not sparse.
        nonzero_params: non-zero elements of the effective parameters.
        total_params: elements of the effective parameters (as :func:`count_params`).
        nm_weights: qualified weight name -> 'N:M' for weights stored as N:M.
        csr_weights: qualified names of weights stored as CSR.
    """

    dense_bytes: int
    stored_bytes: int
    nonzero_params: int
    total_params: int
    nm_weights: dict[str, str] = field(default_factory=dict)
    csr_weights: tuple[str, ...] = ()

    @property
    def compression(self) -> float:
        """dense_bytes / stored_bytes."""
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else math.inf

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        data = asdict(self)
        data["csr_weights"] = list(self.csr_weights)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SizeStats:
        """Inverse of :meth:`to_json`."""
        return cls(
            dense_bytes=int(data["dense_bytes"]),
            stored_bytes=int(data["stored_bytes"]),
            nonzero_params=int(data["nonzero_params"]),
            total_params=int(data["total_params"]),
            nm_weights={str(k): str(v) for k, v in data.get("nm_weights", {}).items()},
            csr_weights=tuple(str(name) for name in data.get("csr_weights", ())),
        )


def model_size(model: nn.Module, *, sparse: bool = True) -> SizeStats:
    """Compute the dense and the stored size of ``model`` in bytes.

    Weights (floating parameters with two or more dims, taken as their effective value, so masks
    apply) are stored sparse when ``sparse``:

    * N:M: every group of M consecutive elements along the input dimension holds at most N
      non-zeros, for a pattern in :data:`NM_PATTERNS` (the cheapest matching one; ties go to
      the earlier). Stored as ``numel * N / M`` values plus ``ceil(log2(M))`` bits of index
      metadata per kept value, as NVIDIA's compressed format (2 bits per value for 2:4). For
      convolutions the groups run along input channels (at each kernel position) or along the
      flattened ``in * kh * kw`` row; either layout qualifies.
    * CSR: any other weight more than half zeros: values of the non-zeros, an int32 column
      index per non-zero and ``rows + 1`` int32 row pointers (rows = output dim 0).

    Everything else (biases, norms, buffers) is counted dense.

    Example:
        >>> model_size(torch.nn.Linear(8, 4)).dense_bytes  # 36 float32
        144
    """
    dense_bytes = stored_bytes = nonzero = total = 0
    nm_weights: dict[str, str] = {}
    csr_weights: list[str] = []
    for name, tensor, is_param in _effective_params(model):
        size = tensor.numel() * tensor.element_size()
        dense_bytes += size
        stored = size
        if is_param:
            total += tensor.numel()
            nonzero += int(torch.count_nonzero(tensor))
        if sparse and is_param and tensor.is_floating_point() and tensor.dim() >= 2:
            pattern = _nm_pattern(tensor)
            if pattern is not None:
                stored = _nm_bytes(tensor, *pattern)
                nm_weights[name] = f"{pattern[0]}:{pattern[1]}"
            elif int(torch.count_nonzero(tensor)) * 2 < tensor.numel():
                stored = _csr_bytes(tensor)
                csr_weights.append(name)
        stored_bytes += stored
    return SizeStats(dense_bytes, stored_bytes, nonzero, total, nm_weights, tuple(csr_weights))


def _nm_pattern(weight: torch.Tensor) -> tuple[int, int] | None:
    """The cheapest N:M pattern the weight satisfies along its input dimension, if any."""
    layouts = [weight.reshape(weight.shape[0], -1)]
    if weight.dim() > 2:  # conv: input channels innermost, per kernel position
        layouts.append(weight.movedim(1, -1).reshape(-1, weight.shape[1]))
    best: tuple[int, int] | None = None
    for keep, group in NM_PATTERNS:
        if best is not None and _nm_bytes(weight, keep, group) >= _nm_bytes(weight, *best):
            continue
        for rows in layouts:
            if rows.shape[-1] % group:
                continue
            per_group = (rows.reshape(-1, group) != 0).sum(dim=1)
            if bool((per_group <= keep).all()):
                best = (keep, group)
                break
    return best


def _nm_bytes(weight: torch.Tensor, keep: int, group: int) -> int:
    """Bytes of an N:M compressed weight: kept values plus ceil(log2(M)) bits per kept value."""
    kept = weight.numel() // group * keep
    metadata_bits = kept * math.ceil(math.log2(group))
    return kept * weight.element_size() + math.ceil(metadata_bits / 8)


def _csr_bytes(weight: torch.Tensor) -> int:
    """Bytes of a CSR weight: values, int32 column indices, int32 row pointers."""
    nonzero = int(torch.count_nonzero(weight))
    rows = weight.shape[0]
    return nonzero * (weight.element_size() + 4) + (rows + 1) * 4


# --------------------------------------------------------------------------------------------
# Dense versus pruned
# --------------------------------------------------------------------------------------------


def compare(
    dense_model: nn.Module,
    pruned_model: nn.Module,
    example_inputs: Inputs,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1,),
    **latency_kwargs: Any,
) -> dict[str, Any]:
    """Measure a dense and a pruned model side by side, for ``amc bench``.

    FLOPs are counted at the batch of ``example_inputs``; latency is measured at each of
    ``batch_sizes``, both models in one interleaved run (:func:`measure_interleaved`), so the
    latency ratio is measured under the same conditions (``warmup``, ``min_run_time``,
    ``threads`` and ``repeats``, the blocks per model, may be given).

    Returns:
        A JSON-serialisable dict: ``device``, ``batch_sizes``, ``rows`` (a list of
        ``{"metric", "dense", "pruned", "ratio"}`` with ratio = pruned / dense, for ``params``,
        ``flops``, ``size_stored_bytes`` and, per batch size b, ``latency_median_ms@b`` and
        ``latency_iqr_ms@b``), and ``details`` with the full :class:`LatencyStats` and
        :class:`SizeStats` of both models.

    Example:
        >>> net = torch.nn.Linear(8, 4)
        >>> report = compare(net, net, torch.randn(1, 8), min_run_time=0.05)
        >>> [row["metric"] for row in report["rows"]][:3]
        ['params', 'flops', 'size_stored_bytes']
    """
    target = resolve_device(device)
    if "repeats" in latency_kwargs:
        latency_kwargs["rounds"] = latency_kwargs.pop("repeats")
    models = {"dense": dense_model, "pruned": pruned_model}
    details: dict[str, dict[str, Any]] = {
        role: {
            "params": count_params(model),
            "flops": count_flops(model, example_inputs),
            "size": model_size(model).to_json(),
            "latency": {},
        }
        for role, model in models.items()
    }
    for size in batch_sizes:
        timed = measure_interleaved(
            list(models.values()), example_inputs, target, batch_size=size, **latency_kwargs
        )
        for role, stats in zip(models, timed, strict=True):
            details[role]["latency"][str(size)] = stats.to_json()
    dense, pruned = details["dense"], details["pruned"]
    pairs: list[tuple[str, float, float]] = [
        ("params", dense["params"], pruned["params"]),
        ("flops", dense["flops"], pruned["flops"]),
        ("size_stored_bytes", dense["size"]["stored_bytes"], pruned["size"]["stored_bytes"]),
    ]
    for batch in map(str, batch_sizes):
        for stat in ("median_ms", "iqr_ms"):
            pairs.append(
                (
                    f"latency_{stat}@{batch}",
                    dense["latency"][batch][stat],
                    pruned["latency"][batch][stat],
                )
            )
    rows = [
        {
            "metric": metric,
            "dense": dense_value,
            "pruned": pruned_value,
            "ratio": pruned_value / dense_value if dense_value else None,
        }
        for metric, dense_value, pruned_value in pairs
    ]
    return {
        "device": str(target),
        "batch_sizes": list(batch_sizes),
        "rows": rows,
        "details": details,
    }
