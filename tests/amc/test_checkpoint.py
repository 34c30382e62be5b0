from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.checkpoint import load_state_dict_file, load_weights, read_metadata, save_weights
from amc.errors import CheckpointError, UnsafeCheckpointError


class Opaque:
    """A class torch.load(weights_only=True) refuses to unpickle."""


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4, bias=False)
        self.out = nn.Linear(4, 4, bias=False)
        self.out.weight = self.embed.weight


def _net(width: int = 3) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source, target = _net(), nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    path = save_weights(source, tmp_path / "sub" / "w.safetensors", metadata={"note": "hi"})
    assert path == tmp_path / "sub" / "w.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]  # no temp file left
    assert load_weights(target, path) is target
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    assert read_metadata(path) == {"note": "hi"}


def test_save_tied_and_non_contiguous(tmp_path: Path) -> None:
    model = Tied()
    save_weights(model, tmp_path / "tied.safetensors")
    state = load_state_dict_file(tmp_path / "tied.safetensors")
    assert sorted(state) == ["embed.weight", "out.weight"]
    assert torch.equal(state["out.weight"], model.embed.weight.detach())
    transposed = {"t": torch.arange(6.0).reshape(2, 3).t()}
    save_weights(transposed, tmp_path / "t.safetensors")
    assert torch.equal(load_state_dict_file(tmp_path / "t.safetensors")["t"], transposed["t"])


def test_save_rejects_non_tensors_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    message = f"Cannot save step to '{path}': safetensors stores only tensors."
    with pytest.raises(CheckpointError, match=re.escape(message)):
        save_weights({"w": torch.ones(1), "step": 3}, path)  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_save_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_weights({"w": torch.ones(2)}, tmp_path / "w.safetensors")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("amc.checkpoint.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights({"w": torch.zeros(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_torch_save_files(tmp_path: Path, wrapper: str | None) -> None:
    source = _net()
    payload = (
        source.state_dict() if wrapper is None else {wrapper: source.state_dict(), "epoch": 3}
    )
    torch.save(payload, tmp_path / "w.pt")
    state = load_state_dict_file(tmp_path / "w.pt")
    assert sorted(state) == sorted(source.state_dict())


def test_data_parallel_prefix_is_removed(tmp_path: Path) -> None:
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "dp.pth")
    load_weights(_net(), tmp_path / "dp.pth")


def test_pickled_code_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"state_dict": _net().state_dict(), "extra": Opaque()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert message.startswith(f"Weights file '{path}' needs pickle to run code when loaded (")
    assert f"{__name__}.Opaque" in message
    assert message.endswith(
        "Convert it to safetensors, or, only if you trust its source, load it with "
        "trust_pickle=True (CLI: --trust-checkpoint)."
    )
    assert sorted(load_state_dict_file(path, trust_pickle=True)) == sorted(_net().state_dict())


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_weights(_net(), missing)
    assert str(info.value) == (
        f"Weights file '{missing}' does not exist or is not a file. Check the path; weights are "
        "a .safetensors file or a torch.save state dict."
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(f"'{bad}' is not a readable safetensors")):
        load_state_dict_file(bad)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(f"Cannot read weights file '{bad_pt}'")):
        load_state_dict_file(bad_pt)
    torch.save([1, 2], tmp_path / "list.pt")
    message = f"Weights file '{tmp_path / 'list.pt'}' holds list, expected a non-empty state dict"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_state_dict_file(tmp_path / "list.pt")


def test_mismatches_are_all_listed(tmp_path: Path) -> None:
    state = _net(width=5).state_dict()
    del state["2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = save_weights(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_weights(_net(width=3), path)
    assert str(info.value) == (
        f"Weights file '{path}' does not fit the Sequential model (9 mismatched keys):\n"
        "  shape mismatch: 0.weight is (5, 4) in the file, (3, 4) in the model\n"
        "  shape mismatch: 0.bias is (5,) in the file, (3,) in the model\n"
        "  shape mismatch: 1.weight is (5,) in the file, (3,) in the model\n"
        "  shape mismatch: 1.bias is (5,) in the file, (3,) in the model\n"
        "  shape mismatch: 1.running_mean is (5,) in the file, (3,) in the model\n"
        "  shape mismatch: 1.running_var is (5,) in the file, (3,) in the model\n"
        "  shape mismatch: 2.weight is (2, 5) in the file, (2, 3) in the model\n"
        "  missing from the file: 2.bias\n"
        "  not in the model: extra.weight\n"
        "Check that the model spec and its options (num_classes, in_channels, ...) match the "
        "weights."
    )


def test_non_strict_ignores_missing_keys_only(tmp_path: Path) -> None:
    state = _net().state_dict()
    del state["2.bias"]
    state["extra"] = torch.zeros(1)
    path = save_weights(state, tmp_path / "w.safetensors")
    target = _net(width=3)
    bias = target[2].bias.detach().clone()
    load_weights(target, path, strict=False)
    assert torch.equal(target[2].bias.detach(), bias)
    with pytest.raises(CheckpointError, match=re.escape("(2 mismatched keys)")):
        load_weights(nn.Sequential(nn.Linear(4, 4)), path, strict=False)
