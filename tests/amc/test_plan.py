from __future__ import annotations

import json
import re

import pytest
import torch

from amc.errors import PlanFormatError, PlanMismatchError
from amc.plan import PLAN_FORMAT, PruningPlan, UnitPlan, channels_for, uniform_plan, validate_plan
from amc.units import analyze
from tests.tiny_models import LeNet, ResidualNet, TransformerNet

X = torch.randn(2, 1, 16, 16)


@pytest.fixture(scope="module")
def lenet_graph():
    model = LeNet()
    return model, analyze(model, X)


def test_json_round_trip_and_format_fields(tmp_path, lenet_graph) -> None:
    model, graph = lenet_graph
    plan = PruningPlan(
        units={"conv1": UnitPlan(0.5, 4), "conv2": UnitPlan(1.0, 16, nm=(2, 4), sparsity=0.0)},
        model=graph.fingerprint,
        skip=(),
        target={"metric": "flops", "fraction": 0.5},
        metrics={"accuracy": 0.9},
        provenance={"agent": "uniform"},
    )
    data = plan.to_json()
    assert data["format"] == PLAN_FORMAT == "amc.plan/1"
    assert data["units"]["conv2"]["nm"] == "2:4"
    assert PruningPlan.from_json(json.loads(json.dumps(data))) == plan
    path = plan.save(tmp_path / "plans" / "p.json")
    assert PruningPlan.load(path) == plan
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temp file left


def test_channels_for_rounds_to_multiples_and_never_to_zero() -> None:
    assert channels_for(0.5, 64, 8) == 32
    assert channels_for(0.3, 64, 8) == 16  # 19.2 -> nearest multiple of 8
    assert channels_for(0.05, 64, 8) == 8  # never below one multiple
    assert channels_for(0.5, 6, 8) == 3  # fewer channels than the multiple
    assert channels_for(1.0, 10, 1) == 10


def test_uniform_plan_keeps_attention_dense_and_applies_nm_where_it_fits() -> None:
    model = TransformerNet()
    plan = uniform_plan(model, X, 0.5, nm=(2, 4))
    assert plan.units["attn.qkv"].keep_ratio == 1.0
    assert plan.units["fc1"].channels == 16 and plan.units["fc1"].nm == (2, 4)
    assert plan.units["patch"].nm is None  # the patch conv's input (1 channel x 4x4) has 1 < 4


def test_unknown_format_version_names_both_versions() -> None:
    with pytest.raises(PlanFormatError, match=re.escape(
        "Unknown plan format 'amc.plan/9': this amc reads 'amc.plan/1'. "
        "Re-export the plan with this version of amc (`amc export`)."
    )):  # fmt: skip
        PruningPlan.from_json({"format": "amc.plan/9", "units": {}})


def test_malformed_json_names_line_and_column(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "amc.plan/1",\n "units": {,}}')
    with pytest.raises(PlanFormatError, match=re.escape(
        f"{path} is not valid JSON: Expecting property name enclosed in double quotes at line 2 "
        "column 12."
    )):  # fmt: skip
        PruningPlan.load(path)


def test_missing_plan_file() -> None:
    with pytest.raises(PlanFormatError, match=re.escape("Plan file 'nope.json' does not exist.")):
        PruningPlan.load("nope.json")


def test_format_errors_are_listed_together() -> None:
    data = {
        "format": PLAN_FORMAT,
        "units": {"conv1": {"keep_ratio": 1.5, "nm": "4:2"}, "conv2": {"keep": 0.5}},
        "criterion": "l3",
    }
    with pytest.raises(PlanFormatError) as info:
        PruningPlan.from_json(data)
    assert str(info.value) == (
        "Invalid plan: unit 'conv1': keep_ratio 1.5 is outside (0, 1]; nm 4:2 needs 0 < N < M, "
        "e.g. \"2:4\"; unit 'conv2': unknown key 'keep'. Did you mean 'keep_ratio'?; criterion "
        "'l3' is unknown. Did you mean 'l2'? Expected one of: l1, l2, bn_scale, taylor, "
        "activation."
    )


def test_validation_lists_every_mismatch_with_did_you_mean(lenet_graph) -> None:
    _, graph = lenet_graph
    plan = PruningPlan(
        units={
            "conv_1": UnitPlan(0.5),
            "conv2": UnitPlan(0.01),
            "fc1": UnitPlan(0.5, nm=(2, 3)),
        },
        model=graph.fingerprint,
        skip=("layer9",),
    )
    with pytest.raises(PlanMismatchError) as info:
        validate_plan(plan, graph)
    assert str(info.value) == (
        "The plan does not fit this model: unknown unit 'conv_1'. Did you mean 'conv1'?; "
        "unit 'conv2': keep_ratio 0.01 leaves zero of its 16 channels; the smallest ratio is "
        "0.0625; unit 'fc1': N:M 2:3 needs the input size of 'fc1' to be a multiple of 3, but "
        "it is 256; round channels (round_to) to a multiple of 3 or leave this unit dense; "
        "block 'layer9' cannot be skipped. Skippable residual blocks: none. Units of this "
        "model: conv1, conv2, fc1 (`amc units MODEL` lists them)."
    )


def test_nm_checks_the_input_size_left_by_channel_cuts(lenet_graph) -> None:
    _, graph = lenet_graph
    ok = PruningPlan(units={"conv1": UnitPlan(0.5), "conv2": UnitPlan(1.0, nm=(2, 4))})
    validate_plan(ok, graph)  # conv2 sees 4 input channels
    bad = PruningPlan(units={"conv1": UnitPlan(0.75), "conv2": UnitPlan(1.0, nm=(2, 4))})
    with pytest.raises(PlanMismatchError, match="multiple of 4, but it is 6"):
        validate_plan(bad, graph)


def test_fingerprint_mismatch_is_refused() -> None:
    graph = analyze(ResidualNet(), X)
    plan = PruningPlan(units={}, model="sha256:0000000000000000")
    with pytest.raises(PlanMismatchError, match=re.escape(
        f"This plan was made for model sha256:0000000000000000, but the model given is "
        f"{graph.fingerprint}"
    )):  # fmt: skip
        validate_plan(plan, graph)


def test_attention_units_refuse_channel_cuts() -> None:
    model = TransformerNet()
    graph = analyze(model, X)
    plan = PruningPlan(units={"attn.qkv": UnitPlan(0.5)})
    with pytest.raises(PlanMismatchError, match=re.escape(
        "unit 'attn.qkv' (attention) cannot lose channels (its channels are split into heads); "
        "keep_ratio must be 1, use nm or sparsity instead"
    )):  # fmt: skip
        validate_plan(plan, graph)


def test_key_names_the_pruned_model_not_the_ratios_asked() -> None:
    a = PruningPlan(units={"c": UnitPlan(0.41, 5), "d": UnitPlan(1.0, 8)}, provenance={"x": 1})
    b = PruningPlan(units={"d": UnitPlan(1.0, 8), "c": UnitPlan(0.44, 5)})
    assert a.key() == b.key()
    assert a.key() != PruningPlan(units={"c": UnitPlan(0.41, 5, (2, 4)), "d": UnitPlan()}).key()
    assert a.key() != PruningPlan(units=a.units, skip=("layer1.0",)).key()
