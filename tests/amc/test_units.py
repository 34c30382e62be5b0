from __future__ import annotations

import torch
from torch import nn

from amc.units import analyze, discover_units, fingerprint
from tests.tiny_models import DepthwiseNet, LeNet, ResidualNet, TransformerNet

X = torch.randn(2, 1, 16, 16)


def test_lenet_units_in_execution_order_with_descriptors() -> None:
    units = discover_units(LeNet(), X)
    assert [u.name for u in units] == ["conv1", "conv2", "fc1"]
    conv2 = units[1]
    assert (conv2.kind, conv2.channels, conv2.in_channels) == ("conv", 16, 8)
    assert (conv2.spatial, conv2.kernel, conv2.stride) == ((16, 16), (3, 3), (2, 2))
    assert conv2.out_layers == ("conv2", "bn2")
    assert conv2.layers == ("conv2", "bn2", "fc1")
    assert conv2.nm_layers == ("conv2",)
    # the classifier's output is never a unit
    assert all("fc2" not in u.out_layers for u in units)


def test_residual_add_couples_stem_and_block_outputs() -> None:
    units = discover_units(ResidualNet(), X)
    assert [u.name for u in units] == ["conv1", "layer1.0.conv1", "layer1.1.conv1"]
    assert set(units[0].out_layers) == {
        "conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"
    }  # fmt: skip


def test_depthwise_conv_joins_its_expansion() -> None:
    units = discover_units(DepthwiseNet(), X)
    expand = units[1]
    assert expand.name == "expand" and expand.kind == "depthwise"
    assert set(expand.out_layers) == {"expand", "dw", "bn_dw"}
    assert expand.nm_layers == ("expand",)  # depthwise weights have no input groups


def test_transformer_attention_is_not_channel_prunable_but_mlp_and_stream_are() -> None:
    units = {u.name: u for u in discover_units(TransformerNet(), X)}
    assert list(units) == ["patch", "attn.qkv", "fc1"]
    assert units["attn.qkv"].kind == "attention" and not units["attn.qkv"].channel_prunable
    assert units["fc1"].kind == "linear" and units["fc1"].channel_prunable
    assert {"norm1", "norm2", "attn.proj", "fc2"} <= set(units["patch"].out_layers)


def test_cost_model_predicts_dense_and_counts_every_param() -> None:
    for model in (LeNet(), ResidualNet(), DepthwiseNet(), TransformerNet()):
        graph = analyze(model, X)
        dense = graph.predict()
        assert dense.params == sum(p.numel() for p in model.parameters())
        assert dense.flops == graph.dense_flops


def test_skippable_blocks_are_the_innermost_residual_modules() -> None:
    assert analyze(ResidualNet(), X).skippable == ("layer1.0", "layer1.1")
    assert analyze(LeNet(), X).skippable == ()


def test_fingerprint_changes_with_shapes_and_ignores_values() -> None:
    a, b = LeNet(), LeNet()
    assert fingerprint(a) == fingerprint(b)
    c = LeNet()
    c.fc1 = nn.Linear(256, 33)
    assert fingerprint(c) != fingerprint(a)


def test_model_is_left_untouched() -> None:
    model = ResidualNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analyze(model, X)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
