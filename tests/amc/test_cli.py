"""The `amc` command line: units, bench, apply and the study commands, good input and bad.

Every command runs in-process through ``amc.cli.main`` (exit code returned, output captured);
two cases run the installed console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import amc
from amc.artifacts import load_program
from amc.cli import main
from amc.plan import PruningPlan, UnitPlan, uniform_plan
from amc.prune import masked_layers
from amc.study import SearchRecord
from amc.units import analyze
from tests.tiny_models import LeNet, ResidualNet

MODEL = "tests.tiny_models:LeNet"
SHAPE = ["--input-shape", "1,16,16"]
X = torch.zeros(1, 1, 16, 16)


def run(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """Run ``amc ARGS`` in-process: (exit code, stdout, stderr)."""
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_of(capsys: pytest.CaptureFixture[str], *args: Any) -> str:
    """Run a command that must fail on bad input; return its one-paragraph message."""
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err.removeprefix("error: ").removesuffix("\n")


@pytest.fixture(scope="module")
def lenet_plan() -> PruningPlan:
    torch.manual_seed(0)
    return uniform_plan(LeNet(), X, 0.5)


# --------------------------------------------------------------------------- units


def test_units_json_lists_units_in_execution_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "units", "resnet20", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    units = [(u["index"], u["name"], u["kind"], u["channels"]) for u in data["units"]]
    stages = [
        (stage, channels, f"layer{stage}.{block}.conv1")
        for stage, channels in ((1, 16), (2, 32), (3, 64))
        for block in range(3)
    ]
    names = ["conv1"]
    counts = [16]
    for stage, channels, name in stages:
        if stage > 1 and name.endswith(".0.conv1"):  # the projection shortcut runs first
            names.append(f"layer{stage}.0.downsample.0")
            counts.append(channels)
        names.append(name)
        counts.append(channels)
    assert units == [
        (i, name, "conv", n) for i, (name, n) in enumerate(zip(names, counts, strict=True))
    ]
    assert all(unit["channel_prunable"] for unit in data["units"])
    assert data["model"] == "resnet20" and data["fingerprint"].startswith("sha256:")
    assert data["dense_params"] == sum(
        p.numel() for p in amc.zoo.get_model("resnet20").parameters()
    )
    assert data["skippable_blocks"] == [
        "layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"
    ]  # fmt: skip


def test_units_table_marks_attention_as_not_cut(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "units", "tests.tiny_models:TransformerNet", *SHAPE)
    assert (code, err) == (0, "")
    rows = {
        cells[2]: cells[3:-1]  # the cells between the first and the last border
        for line in out.splitlines()
        if len(cells := [c.strip() for c in re.split(r"[│┃]", line)]) == 14
    }
    assert list(rows) == ["unit", "patch", "attn.qkv", "fc1"]
    # kind, channels, ..., N:M, cut
    assert (rows["attn.qkv"][0], rows["attn.qkv"][1], rows["attn.qkv"][-1]) == (
        "attention", "48", "no"
    )  # fmt: skip
    assert (rows["fc1"][0], rows["fc1"][-1]) == ("linear", "yes")
    assert (rows["patch"][0], rows["patch"][-1]) == ("conv", "yes")
    assert "3 prunable units" in out and "skippable residual blocks: none" in out


# --------------------------------------------------------------------------- bench


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["metric"]: row for row in report["rows"]}


def test_bench_json_compares_dense_with_a_uniform_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "bench", MODEL, *SHAPE, "--keep", "0.5", "--batch-size", "2", "--json"
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    rows = _rows(report)
    assert report["plan"] == "uniform keep_ratio=0.5" and report["device"] == "cpu"
    assert {"params", "flops", "latency_median_ms@2", "latency_iqr_ms@2"} <= set(rows)
    dense, pruned = LeNet(), amc.apply_plan(LeNet(), uniform_plan(LeNet(), X, 0.5), X)
    assert (rows["params"]["dense"], rows["params"]["pruned"]) == (
        amc.count_params(dense), amc.count_params(pruned)
    )  # fmt: skip
    assert (rows["flops"]["dense"], rows["flops"]["pruned"]) == (
        amc.count_flops(dense, X), amc.count_flops(pruned, X)
    )  # fmt: skip
    for metric in ("params", "flops", "size_stored_bytes"):
        row = rows[metric]
        assert 0 < row["ratio"] < 1 and row["ratio"] == pytest.approx(row["pruned"] / row["dense"])
    assert rows["latency_median_ms@2"]["dense"] > 0 and rows["latency_median_ms@2"]["pruned"] > 0


def test_bench_measures_a_saved_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = uniform_plan(LeNet(), X, 0.25).save(tmp_path / "plan.json")
    code, out, err = run(capsys, "bench", MODEL, *SHAPE, "--plan", plan, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["plan"] == str(plan)
    flops = _rows(report)["flops"]
    assert flops["pruned"] == amc.count_flops(
        amc.apply_plan(LeNet(), PruningPlan.load(plan), X), X
    )
    assert flops["ratio"] == pytest.approx(flops["pruned"] / flops["dense"])
    assert flops["ratio"] < 0.5
    # The table form shows the same rows.
    code, out, _ = run(capsys, "bench", MODEL, *SHAPE, "--plan", plan)
    assert code == 0 and "pruned/dense" in out and f"{flops['ratio']:.3f}" in out


def test_bench_refuses_both_plan_and_keep(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    plan = lenet_plan.save(tmp_path / "plan.json")
    assert error_of(capsys, "bench", MODEL, "--plan", plan, "--keep", "0.3") == (
        f"--plan {plan} and --keep 0.3 both choose the pruned model; give one of them."
    )
    assert error_of(capsys, "bench", MODEL, *SHAPE, "--keep", "1.5") == (
        "keep_ratio 1.5 is outside (0, 1]; use e.g. 0.5."
    )


# --------------------------------------------------------------------------- apply


def test_apply_writes_a_pruned_model_that_loads_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    plan = lenet_plan.save(tmp_path / "plan.json")
    out_dir = tmp_path / "pruned"
    code, out, _ = run(
        capsys, "apply", plan, "--model", MODEL, *SHAPE, "--out", out_dir,
        "--data", "digits", "--finetune-steps", "2",
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "manifest.json", "plan.json", "program.pt2", "weights.safetensors"
    ]  # fmt: skip
    accuracy = re.search(r"│ accuracy\s+│\s+([\d.]+) │\s+([\d.]+) │", out)
    assert accuracy is not None, out
    assert all(0.0 <= float(value) <= 1.0 for value in accuracy.groups())
    assert f"wrote {out_dir}/" in out
    assert sorted(os.listdir(tmp_path)) == ["plan.json", "pruned"]  # no staging folder left
    # the command it prints for the latency runs as printed
    hint = next(line for line in out.splitlines() if line.startswith("latency, dense vs pruned"))
    command = shlex.split(hint.split(": ", 1)[1])
    assert command[:4] == ["amc", "bench", MODEL, "--plan"]
    code, bench_out, _ = run(capsys, *command[1:], "--json")
    assert code == 0 and json.loads(bench_out)["plan"] == str(plan)
    assert PruningPlan.load(out_dir / "plan.json") == lenet_plan
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["model_spec"] == MODEL and manifest["input_shape"] == [1, 16, 16]
    assert manifest["model_kwargs"] == {"num_classes": 10, "in_channels": 1, "image_size": 16}
    assert manifest["program_batch"] == "dynamic"

    loaded = amc.load_pruned(out_dir).eval()
    batch = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        expected = load_program(out_dir).module()(batch)
        torch.testing.assert_close(loaded(batch), expected)
    assert loaded.conv1.out_channels == 4 and loaded.fc1.out_features == 16
    # A second apply to the same pruned-model folder replaces it.
    code, _, _ = run(capsys, "apply", plan, "--model", MODEL, *SHAPE, "--out", out_dir)
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["plan.json", "pruned"]


def test_apply_in_rounds_writes_what_one_shot_writes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan_value = PruningPlan(
        units={"conv1": UnitPlan(0.5), "conv2": UnitPlan(0.5, nm=(2, 4)), "fc1": UnitPlan(0.25)},
        model=analyze(LeNet(), X).fingerprint,
    )
    plan = plan_value.save(tmp_path / "plan.json")
    out_dir = tmp_path / "pruned"
    code, out, _ = run(
        capsys, "apply", plan, "--model", MODEL, *SHAPE, "--out", out_dir,
        "--rounds", "3", "--finetune-steps", "6", "--data", "digits",
    )  # fmt: skip
    assert code == 0, out
    assert f"densevsprunedby{plan}in3rounds" in "".join(out.split())  # the wrapped title
    assert re.search(r"│ accuracy\s+│\s+[\d.]+ │\s+[\d.]+ │", out) is not None, out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "manifest.json", "plan.json", "program.pt2", "weights.safetensors"
    ]  # fmt: skip
    assert PruningPlan.load(out_dir / "plan.json") == plan_value

    loaded = amc.load_pruned(out_dir).eval()
    one_shot = amc.apply_plan(LeNet(), plan_value, X)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in one_shot.state_dict().items()
    }
    assert masked_layers(loaded) == {"conv2": ["2:4"]}
    weight = loaded.conv2.weight.detach().movedim(1, -1).reshape(-1, 4)
    assert ((weight != 0).sum(1) <= 2).all()
    batch = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), load_program(out_dir).module()(batch))


def test_apply_refuses_rounds_it_cannot_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    plan = lenet_plan.save(tmp_path / "plan.json")
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--out", tmp_path / "out"]
    assert error_of(capsys, *args, "--rounds", "0") == (
        "--rounds 0 is not allowed: use 1 (one shot) or more."
    )
    assert error_of(capsys, *args, "--rounds", "3") == (
        "--rounds 3 fine-tunes after every round: give --data and at least 3 --finetune-steps "
        "to split over the rounds (got 0); e.g. --data digits --finetune-steps 300."
    )
    assert error_of(
        capsys, *args, "--rounds", "3", "--data", "digits", "--finetune-steps", "2"
    ) == (
        "--rounds 3 fine-tunes after every round: give --data and at least 3 --finetune-steps "
        "to split over the rounds (got 2); e.g. --data digits --finetune-steps 300."
    )
    assert error_of(capsys, *args, "--rounds", "3", "--finetune-steps", "6") == (
        "--finetune-steps needs --data to fine-tune on; e.g. --data digits."
    )
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]


def test_apply_accepts_a_pickle_checkpoint_only_with_the_trust_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    plan = lenet_plan.save(tmp_path / "plan.json")
    weights = tmp_path / "lenet.pt"
    torch.save({"state_dict": LeNet().state_dict(), "meta": Meta("lenet")}, weights)
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--weights", weights, "--out"]
    assert error_of(capsys, *args, tmp_path / "out") == (
        f"Weights file '{weights}' needs pickle to run code when loaded (Unsupported global: "
        f"GLOBAL {__name__}.Meta was not an allowed global by default). Convert it to "
        "safetensors, or, only if you trust its source, load it with trust_pickle=True "
        "(CLI: --trust-checkpoint)."
    )
    assert sorted(os.listdir(tmp_path)) == ["lenet.pt", "plan.json"]
    code, _, _ = run(capsys, *args, tmp_path / "out", "--trust-checkpoint")
    assert code == 0 and (tmp_path / "out" / "weights.safetensors").is_file()


@dataclass
class Meta:
    """Something only pickle can store: loading it imports this module (runs code)."""

    name: str
    tags: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- bad input


def _edit(**units: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for name, entry in units.items():
            if entry is None:
                del data["units"][name]
            else:
                data["units"][name] = entry

    return edit


def _rename_conv2(data: dict[str, Any]) -> None:
    data["units"]["conv_2"] = data["units"].pop("conv2")


def _format(version: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.update(format=version)


BAD_PLANS = {
    "unknown unit": (
        _rename_conv2,
        "The plan does not fit this model: unknown unit 'conv_2'. Did you mean 'conv2'? Units of "
        "this model: conv1, conv2, fc1 (`amc units MODEL` lists them).",
    ),
    "ratio above 1": (
        _edit(conv2={"keep_ratio": 1.5}),
        "{plan}: Invalid plan: unit 'conv2': keep_ratio 1.5 is outside (0, 1].",
    ),
    "ratio 0": (
        _edit(conv1={"keep_ratio": 0}, fc1={"keep_ratio": -0.5}),
        "{plan}: Invalid plan: unit 'conv1': keep_ratio 0 is outside (0, 1]; unit 'fc1': "
        "keep_ratio -0.5 is outside (0, 1].",
    ),
    "zero channels": (
        _edit(conv1={"keep_ratio": 0.01}),
        "The plan does not fit this model: unit 'conv1': keep_ratio 0.01 leaves zero of its 8 "
        "channels; the smallest ratio is 0.125.",
    ),
    "N:M input size": (
        _edit(conv2={"keep_ratio": 0.5}, fc1={"keep_ratio": 1.0, "nm": "2:5"}),
        "The plan does not fit this model: unit 'fc1': N:M 2:5 needs the input size of 'fc1' to "
        "be a multiple of 5, but it is 128; round channels (round_to) to a multiple of 5 or "
        "leave this unit dense.",
    ),
    "every problem at once": (
        _edit(conv1={"keep_ratio": 0.01}, fc1={"keep_ratio": 0.5, "nm": "2:3"}, fc9=0.5),
        "The plan does not fit this model: unit 'conv1': keep_ratio 0.01 leaves zero of its 8 "
        "channels; the smallest ratio is 0.125; unknown unit 'fc9'. Did you mean 'fc1'?; unit "
        "'fc1': N:M 2:3 needs the input size of 'fc1' to be a multiple of 3, but it is 128; "
        "round channels (round_to) to a multiple of 3 or leave this unit dense. Units of this "
        "model: conv1, conv2, fc1 (`amc units MODEL` lists them).",
    ),
    "unknown format version": (
        _format("amc.plan/2"),
        "{plan}: Unknown plan format 'amc.plan/2': this amc reads 'amc.plan/1'. Re-export the "
        "plan with this version of amc (`amc export`).",
    ),
    "no format": (
        lambda data: data.pop("format"),
        "{plan}: Unknown plan format None: this amc reads 'amc.plan/1'. Re-export the plan with "
        "this version of amc (`amc export`).",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_apply_refuses_a_bad_plan_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan, case: str
) -> None:
    edit, message = BAD_PLANS[case]
    data = lenet_plan.to_json()
    edit(data)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data))
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--out", tmp_path / "out"]
    assert error_of(capsys, *args) == message.format(plan=plan)
    assert os.listdir(tmp_path) == ["plan.json"]


def test_apply_refuses_malformed_json_and_missing_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "amc.plan/1",\n "units": {,}}')
    out = tmp_path / "out"
    assert error_of(capsys, "apply", bad, "--model", MODEL, "--out", out) == (
        f"{bad} is not valid JSON: Expecting property name enclosed in double quotes at line 2 "
        "column 12. A plan file is the JSON written by `amc export`."
    )
    missing_plan = tmp_path / "nope.json"
    assert error_of(capsys, "apply", missing_plan, "--model", MODEL, "--out", out) == (
        f"Plan file '{missing_plan}' does not exist. Write one with `amc export` or "
        "PruningPlan.save."
    )
    plan = lenet_plan.save(tmp_path / "plan.json")
    weights = tmp_path / "nope.safetensors"
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--weights", weights, "--out", out]
    assert error_of(capsys, *args) == (
        f"Weights file '{weights}' does not exist or is not a file. Check the path; weights are "
        "a .safetensors file or a torch.save state dict."
    )
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "plan.json"]


def test_apply_refuses_a_plan_for_another_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plan = uniform_plan(ResidualNet(), X, 0.5).save(tmp_path / "residual.json")
    fingerprint = analyze(LeNet(), X).fingerprint
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--out", tmp_path / "out"]
    assert error_of(capsys, *args) == (
        f"This plan was made for model {PruningPlan.load(plan).model}, but the model given is "
        f"{fingerprint}: their layer names or shapes differ. Apply a plan to the model it was "
        "searched for, or search a new plan for this one."
    )
    assert os.listdir(tmp_path) == ["residual.json"]


def test_bad_model_shape_data_and_output_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lenet_plan: PruningPlan
) -> None:
    plan = lenet_plan.save(tmp_path / "plan.json")
    out = tmp_path / "out"
    assert error_of(capsys, "apply", plan, "--model", "resnt20", "--out", out) == (
        "Unknown model 'resnt20'. Did you mean 'resnet20'? Expected one of: mobilenetv2, "
        "resnet20, resnet56, vgg11, vit_tiny."
    )
    assert error_of(capsys, "units", "vgg1") == (
        "Unknown model 'vgg1'. Did you mean 'vgg11'? Expected one of: mobilenetv2, resnet20, "
        "resnet56, vgg11, vit_tiny."
    )
    for shape in ("1,16", "a,b,c", "1,0,16"):
        assert error_of(capsys, "units", MODEL, "--input-shape", shape) == (
            f"--input-shape '{shape}' is not C,H,W with three positive integers; e.g. 3,32,32."
        )
    assert error_of(capsys, "apply", plan, "--model", MODEL, "--out", out, "--data", "digts") == (
        "Unknown data set 'digts'. Did you mean 'digits'? Expected one of: cifar10, digits, "
        "fashion-mnist, mnist, synthetic."
    )
    args = ["apply", plan, "--model", MODEL, *SHAPE, "--out", out]
    assert error_of(capsys, *args, "--finetune-steps", "2") == (
        "--finetune-steps needs --data to fine-tune on; e.g. --data digits."
    )
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]
    # An --out that is someone's folder is not replaced.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert error_of(capsys, *args) == (
        f"Output folder '{out}' is a folder of other files, not a pruned-model folder (no "
        "manifest.json); amc would replace it. Choose a new folder for --out, or remove that "
        "one first."
    )
    assert os.listdir(out) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == [
        "out",
        "plan.json",
    ]


def test_usage_errors_exit_2_and_unexpected_failures_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "units", MODEL, "--input-shap", "1,16,16")
    assert code == 2 and "No such option: --input-shap" in err
    code, _, err = run(capsys, "bench", MODEL, "--batch-size", "0")
    assert code == 2 and "Invalid value for '--batch-size': Input should be greater" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "No such command 'frobnicate'." in err

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom [conv1]")

    monkeypatch.setattr("amc.units.analyze", broken)
    code, out, err = run(capsys, "units", MODEL, *SHAPE)
    assert (code, out) == (1, "")
    assert err.endswith(
        "unexpected failure: RuntimeError: boom [conv1]. This is a bug in amc or a library it "
        "uses; please report it with the traceback above.\n"
    )
    assert "Traceback" in err


# --------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class Proposal:
    """What agents.base.Proposal carries (the record reads only these fields)."""

    plan: PruningPlan
    params: dict[str, float]
    episode: int
    info: dict[str, Any] = field(default_factory=dict)


def _result(plan: PruningPlan, accuracy: float, latency_ms: float) -> dict[str, Any]:
    pruned = amc.apply_plan(LeNet(), plan, X)
    return {
        "status": "ok", "accuracy": accuracy, "latency_ms": latency_ms,
        "flops": amc.count_flops(pruned, X), "params": amc.count_params(pruned),
    }  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A storage URL holding study 'lenet-demo': trials 0 and 1 complete, 2 failed."""
    url = f"sqlite:///{tmp_path_factory.mktemp('studies') / 'amc.db'}"
    dense = LeNet()
    plans = [uniform_plan(dense, X, keep) for keep in (0.5, 0.75, 0.25)]
    units = analyze(dense, X).units
    attrs = {
        "fingerprint": plans[0].model,
        "units": [{"name": unit.name, "channels": unit.channels} for unit in units],
        "dense": {"accuracy": 0.95, "latency_ms": 2.0, "flops": amc.count_flops(dense, X),
                  "params": amc.count_params(dense)},
        "objectives": ["accuracy"],
        "agent": "uniform",
        "config": {"model": MODEL},
    }  # fmt: skip
    record = SearchRecord.create(url, "lenet-demo", ["maximize"], attrs)
    for episode, (plan, accuracy) in enumerate(zip(plans[:2], (0.8, 0.9), strict=True)):
        params = {name: unit.keep_ratio for name, unit in plan.units.items()}
        number = record.start(Proposal(plan, params, episode))
        record.finish(number, _result(plan, accuracy, 1.0 + episode), [accuracy])
    number = record.start(Proposal(plans[2], {}, 2))
    record.finish(number, {"status": "failed", "reason": "nan_loss"}, None)
    return url


def test_studies_lists_the_study(capsys: pytest.CaptureFixture[str], study: str) -> None:
    code, out, err = run(capsys, "studies", "--storage", study)
    assert (code, err) == (0, "")
    row = next(line for line in out.splitlines() if "lenet-demo" in line)
    cells = [cell.strip() for cell in re.split(r"[│┃]", row) if cell.strip()]
    assert cells[0] == "lenet-demo" and "uniform" in cells and "0.9" in cells


def test_show_prints_best_trials_and_writes_plots(
    capsys: pytest.CaptureFixture[str], study: str, tmp_path: Path
) -> None:
    code, out, err = run(capsys, "show", "lenet-demo", "--storage", study, "--plots", tmp_path)
    assert (code, err) == (0, "")
    assert "best (trial 1)" in out and "Best trials" in out
    pngs = sorted(path.name for path in tmp_path.glob("*.png"))
    assert pngs == ["keep_ratios.png", "pareto.png", "search_curve.png"]
    for name in pngs:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"wrote {tmp_path / name}" in out


def test_export_writes_a_plan_that_apply_accepts(
    capsys: pytest.CaptureFixture[str], study: str, tmp_path: Path
) -> None:
    plan_path = tmp_path / "best.json"
    code, out, err = run(capsys, "export", "lenet-demo", "--storage", study, "--out", plan_path)
    assert (code, err) == (0, "")
    assert out == f"wrote {plan_path} (trial 1)\n"
    plan = PruningPlan.load(plan_path)
    assert plan.units == uniform_plan(LeNet(), X, 0.75).units
    assert plan.provenance["study"] == "lenet-demo" and plan.provenance["trial"] == 1
    assert plan.metrics["accuracy"] == 0.9
    code, out, err = run(capsys, "export", "lenet-demo", "--storage", study, "--trial", "0",
                         "--out", tmp_path / "first.json")  # fmt: skip
    assert code == 0 and PruningPlan.load(tmp_path / "first.json").provenance["trial"] == 0

    code, out, _ = run(
        capsys, "apply", plan_path, "--model", MODEL, *SHAPE, "--out", tmp_path / "pruned"
    )
    assert code == 0 and (tmp_path / "pruned" / "program.pt2").is_file()


def test_study_commands_refuse_unknown_trials_studies_and_storages(
    capsys: pytest.CaptureFixture[str], study: str, tmp_path: Path
) -> None:
    out = tmp_path / "plan.json"
    export = ["export", "lenet-demo", "--storage", study, "--out", out]
    for trial in ("99", "2"):  # 2 failed: it has no result to export
        assert error_of(capsys, *export, "--trial", trial) == (
            f"Study 'lenet-demo' has no completed trial '{trial}'. Completed trials: 0, 1."
        )
    assert error_of(capsys, *export, "--trial", "last") == (
        "--trial must be a trial number or 'best', got 'last'."
    )
    unknown = (
        f"Unknown study 'lenet-dem' in {study}. Did you mean 'lenet-demo'? Studies there: "
        f"lenet-demo. List them with `amc studies --storage {study}`."
    )
    assert error_of(capsys, "show", "lenet-dem", "--storage", study) == unknown
    assert error_of(capsys, "export", "lenet-dem", "--storage", study, "--out", out) == unknown
    missing = tmp_path / "typo.db"
    message = (
        f"No storage at sqlite:///{missing}: '{missing}' does not exist. Check --storage, or "
        "start a search with `amc search` to create it."
    )
    assert error_of(capsys, "dashboard", "--storage", f"sqlite:///{missing}") == message
    assert error_of(capsys, "studies", "--storage", f"sqlite:///{missing}") == message
    assert error_of(capsys, "export", "lenet-demo", "--storage", study, "--out", tmp_path) == (
        f"--out '{tmp_path}' is a folder; name the plan file, e.g. plan.json."
    )
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- console script


def _console_script() -> str:
    script = Path(sys.executable).with_name("amc")
    if not script.is_file():
        pytest.skip(f"no console script next to {sys.executable}; install amc with pip -e .")
    return str(script)


def test_console_script_exit_codes_and_a_model_from_the_working_folder(tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\n"
        "def tiny(num_classes=10, in_channels=1):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.Flatten(),\n"
        "                         nn.Linear(8 * 14 * 14, num_classes))\n"
    )
    env = {**os.environ, "PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [_console_script(), "units", "my_models:tiny", *SHAPE, "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [unit["name"] for unit in json.loads(done.stdout)["units"]] == ["0"]
    done = subprocess.run(
        [_console_script(), "apply", "nope.json", "--model", "my_models:tiny", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "error: Plan file 'nope.json' does not exist. Write one with `amc export` or "
        "PruningPlan.save.\n"
    )
    assert os.listdir(tmp_path) == ["my_models.py"]
