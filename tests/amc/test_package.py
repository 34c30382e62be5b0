"""The package's public surface: every name in ``amc.__all__`` resolves, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import amc


def test_every_public_name_resolves_to_its_module() -> None:
    from amc.plan import PruningPlan
    from amc.prune import apply_plan

    assert amc.PruningPlan is PruningPlan
    assert amc.apply_plan is apply_plan
    assert amc.zoo.get_model("resnet20") is not None
    for name in amc.__all__:
        assert getattr(amc, name) is not None, name
    assert set(amc.__all__) <= set(dir(amc))


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'aply_plan'"):
        _ = amc.aply_plan  # type: ignore[attr-defined]


def test_import_and_the_cli_module_do_not_import_torch() -> None:
    """`amc --help`, `amc studies` and the CLI's start stay fast: torch loads on first use."""
    code = (
        "import sys, amc, amc.cli; "
        "print('torch' in sys.modules); amc.count_flops; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True"]


def test_reading_studies_and_plans_does_not_import_torch_or_matplotlib() -> None:
    """`amc studies`, `show` and `export` read the study and plans before anything needs torch;
    the plots import matplotlib, and analysing a model imports torch, when they run."""
    code = (
        "import sys, amc.study, amc.report, amc.plan; "
        "print(*(m in sys.modules for m in ('torch', 'torch_pruning', 'matplotlib'))); "
        "amc.study.encode_agent_state({'x': 1}); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "False", "True"]
