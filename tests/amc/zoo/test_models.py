from __future__ import annotations

import re
import textwrap

import pytest
import torch
from torch import nn

from amc.errors import ModelSpecError, UnknownNameError
from amc.zoo import MODELS, get_model, resolve_model
from amc.zoo.vit import Attention

PARAMS_AT_10_CLASSES = {
    "resnet20": 272474,
    "resnet56": 855770,
    "vgg11": 9228362,
    "mobilenetv2": 2236682,
    "vit_tiny": 141898,
}


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def test_registry_names() -> None:
    assert sorted(MODELS) == ["mobilenetv2", "resnet20", "resnet56", "vgg11", "vit_tiny"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name: str) -> None:
    model = get_model(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_first_layer_takes_in_channels(name: str, in_channels: int) -> None:
    model = get_model(name, in_channels=in_channels)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == in_channels


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_counts(name: str) -> None:
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS_AT_10_CLASSES[name]


@pytest.mark.parametrize(("name", "convs", "bns"), [("resnet20", 21, 21), ("resnet56", 57, 57)])
def test_resnet_structure(name: str, convs: int, bns: int) -> None:
    model = get_model(name)
    modules = dict(model.named_modules())
    assert _count(model, nn.Conv2d) == convs
    assert _count(model, nn.BatchNorm2d) == bns
    for key in ("conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer3.0.conv2", "fc"):
        assert key in modules
    # Option B: real 1x1 conv + BN projection shortcuts only where the shape changes.
    assert modules["layer1.0"].downsample is None
    shortcut = modules["layer2.0.downsample.0"]
    assert isinstance(shortcut, nn.Conv2d)
    assert (
        shortcut.in_channels,
        shortcut.out_channels,
        shortcut.kernel_size,
        shortcut.stride,
    ) == (
        16,
        32,
        (1, 1),
        (2, 2),
    )
    assert isinstance(modules["layer3.0.downsample.1"], nn.BatchNorm2d)
    assert modules["fc"].in_features == 64


def test_vgg11_structure() -> None:
    model = get_model("vgg11", num_classes=4)
    assert _count(model, nn.Conv2d) == 8
    assert _count(model, nn.MaxPool2d) == 5
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 4)


def test_mobilenetv2_structure() -> None:
    model = get_model("mobilenetv2")
    assert model.conv1.stride == (1, 1)
    assert len(model.layers) == 17
    assert sum(block.use_residual for block in model.layers) == 10
    assert model.layers[0].conv1 is None  # expansion 1: no expand conv
    block = model.layers[1]
    assert block.conv2.groups == block.conv2.in_channels == 96
    assert (block.conv1.kernel_size, block.conv3.kernel_size) == ((1, 1), (1, 1))


def test_mobilenetv2_width_mult() -> None:
    model = get_model("mobilenetv2", width_mult=0.5)
    assert model.conv1.out_channels == 16
    assert model.classifier.in_features == 1280
    assert sum(p.numel() for p in model.parameters()) == 700490


def test_vit_tiny_structure() -> None:
    model = get_model("vit_tiny", num_classes=3)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attentions) == 4
    attn = model.blocks[0].attn
    assert type(attn).__name__ == "Attention"
    assert attn.num_heads == 4
    assert (attn.qkv.in_features, attn.qkv.out_features) == (64, 192)
    assert (attn.proj.in_features, attn.proj.out_features) == (64, 64)
    mlp = model.blocks[0].mlp
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (64, 128, 64)
    assert model.patch_embed.proj.kernel_size == (4, 4)
    assert model.head.out_features == 3


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_image_size_and_pool(pool: str) -> None:
    model = get_model("vit_tiny", in_channels=1, image_size=16, pool=pool).eval()
    assert model.pos_embed.shape == (1, 16 + (pool == "cls"), 64)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_vit_attention_runs_with_narrower_heads() -> None:
    # A pruned qkv (fewer channels per head) must still run: the head width is read at run time.
    attn = Attention(64, 4)
    attn.qkv = nn.Linear(64, 3 * 4 * 8)
    attn.proj = nn.Linear(32, 64)
    assert attn(torch.randn(2, 5, 64)).shape == (2, 5, 64)


def test_get_model_unknown_name() -> None:
    message = (
        "Unknown model 'resnet2'. Did you mean 'resnet20'? "
        "Expected one of: mobilenetv2, resnet20, resnet56, vgg11, vit_tiny."
    )
    with pytest.raises(UnknownNameError, match=re.escape(message)):
        get_model("resnet2")
    with pytest.raises(UnknownNameError, match=re.escape("Unknown model 'vit-tiny'.")):
        resolve_model("vit-tiny")


def test_resolve_model_filters_keywords() -> None:
    model = resolve_model("resnet20", num_classes=5, in_channels=1, image_size=32)
    assert model.fc.out_features == 5
    assert model.conv1.in_channels == 1
    vit = resolve_model("vit_tiny", num_classes=5, in_channels=1, image_size=16)
    assert vit.pos_embed.shape == (1, 16, 64)


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "amc_test_factories.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def tiny(num_classes, in_channels=3):
                return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

            def anything(**kwargs):
                return nn.Linear(kwargs["in_channels"], kwargs["num_classes"])

            def not_a_model(num_classes=10):
                return "nope"

            VALUE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "amc_test_factories"


def test_resolve_callable_spec(factory_module: str) -> None:
    model = resolve_model(f"{factory_module}:tiny", num_classes=4, in_channels=1, image_size=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    linear = resolve_model(f"{factory_module}:anything", num_classes=4, in_channels=6)
    assert (linear.in_features, linear.out_features) == (6, 4)


def test_resolve_callable_spec_errors(factory_module: str) -> None:
    form = "Expected a model spec of the form 'package.module:callable'"
    with pytest.raises(ModelSpecError) as info:
        resolve_model("no_such_pkg_xyz.mod:make")
    assert str(info.value) == (
        "Cannot import module 'no_such_pkg_xyz.mod' of model spec 'no_such_pkg_xyz.mod:make': "
        f"No module named 'no_such_pkg_xyz'. {form}, with the module importable from the "
        "current environment."
    )
    with pytest.raises(ModelSpecError) as info:
        resolve_model(f"{factory_module}:missing")
    assert str(info.value) == (
        f"Module {factory_module!r} has no attribute 'missing' "
        f"(model spec '{factory_module}:missing'). {form}."
    )
    with pytest.raises(
        ModelSpecError, match=re.escape(f"'{factory_module}:VALUE' is not callable")
    ):
        resolve_model(f"{factory_module}:VALUE")
    with pytest.raises(ModelSpecError) as info:
        resolve_model(f"{factory_module}:not_a_model")
    assert str(info.value) == (
        f"Model spec '{factory_module}:not_a_model' returned str, expected a torch.nn.Module."
    )


def test_vit_qkv_is_coupled_to_proj_in_dependency_graph() -> None:
    # Regression: indexing qkv[0], qkv[1], qkv[2] hid the q/k/v split from Torch-Pruning and
    # coupled 192 qkv channels to proj's 64 inputs; unbind maps 2 proj inputs to 6 qkv outputs.
    tp = pytest.importorskip("torch_pruning")
    model = get_model("vit_tiny").eval()
    graph = tp.DependencyGraph().build_dependency(
        model,
        torch.randn(1, 3, 32, 32),
        unwrapped_parameters=[(model.pos_embed, 2)],
    )
    attn = model.blocks[0].attn
    group = graph.get_pruning_group(attn.proj, tp.prune_linear_in_channels, idxs=[0, 1])
    sizes = {dep.target.module: len(idxs) for dep, idxs in group}
    assert (sizes[attn.proj], sizes[attn.qkv]) == (2, 6)
