from __future__ import annotations

import json
import re

import pytest
import torch

from amc.artifacts import load_program, load_pruned, save_pruned
from amc.errors import CheckpointError
from amc.plan import PruningPlan, UnitPlan
from amc.prune import apply_plan, masked_layers
from amc.units import analyze
from tests.tiny_models import LeNet


def pruned_lenet():
    torch.manual_seed(0)
    model, x = LeNet().eval(), torch.randn(2, 1, 16, 16)
    graph = analyze(model, x)
    plan = PruningPlan(
        units={
            "conv1": UnitPlan(0.5, 4),
            "conv2": UnitPlan(0.5, 8, nm=(2, 4)),
            "fc1": UnitPlan(1.0, sparsity=0.5),
        },
        model=graph.fingerprint,
    )
    return model, x, plan, apply_plan(model, plan, x, graph=graph).eval()


def test_save_then_load_pruned_gives_identical_outputs(tmp_path) -> None:
    model, x, plan, pruned = pruned_lenet()
    artifacts = save_pruned(
        pruned, plan, tmp_path / "out", x, model_spec="tests.tiny_models:LeNet"
    )
    assert sorted(p.name for p in artifacts.folder.iterdir()) == [
        "manifest.json", "plan.json", "program.pt2", "weights.safetensors"
    ]  # fmt: skip
    manifest = json.loads(artifacts.manifest.read_text())
    assert manifest["format"] == "amc.pruned/1" and manifest["input_shape"] == [1, 16, 16]
    loaded = load_pruned(tmp_path / "out").eval()
    assert torch.equal(loaded(x), pruned(x))
    assert masked_layers(loaded) == {"conv2": ["2:4"], "fc1": ["unstructured"]}
    # from parts: the dense model, the plan and the weights
    again = load_pruned(LeNet(), plan, artifacts.weights, x).eval()
    assert torch.equal(again(x), pruned(x))


def test_exported_program_gives_identical_outputs(tmp_path) -> None:
    _, x, plan, pruned = pruned_lenet()
    save_pruned(pruned, plan, tmp_path / "out", x, model_spec="tests.tiny_models:LeNet")
    program = load_program(tmp_path / "out")
    assert torch.allclose(program.module()(x), pruned(x), atol=1e-6)


def test_weights_that_do_not_fit_the_plan_are_refused(tmp_path) -> None:
    _, x, plan, pruned = pruned_lenet()
    artifacts = save_pruned(pruned, plan, tmp_path / "out", x, model_spec="", export=False)
    other = PruningPlan(units={"conv1": UnitPlan(1.0)})
    with pytest.raises(CheckpointError) as info:
        load_pruned(LeNet(), other, artifacts.weights, x)
    message = str(info.value)
    assert message.startswith(
        f"Weights {str(artifacts.weights)!r} do not fit the plan's pruned model: "
        "bn1.bias (4,) vs (8,); "
    )
    assert "; fc1.weight (32, 128) vs (32, 256). Use the weights written together" in message


def test_folder_without_manifest_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(
        f"{str(tmp_path)!r} is not a pruned-model folder (no manifest.json)"
    )):  # fmt: skip
        load_pruned(tmp_path)
