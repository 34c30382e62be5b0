"""experiments/bench_proxy.py at a tiny budget: resnet20 on synthetic data, 3 plans."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from experiments import bench_proxy


def test_tiny_run_prints_a_row_per_protocol_and_per_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--case", "resnet20-synthetic", "--target", "flops=0.5", "--plans", "3",
            "--protocols", "1:0", "2:2", "--final-steps", "2", "--val", "32", "--test", "32",
            "--baseline-epochs", "1", "--runs", str(tmp_path)]  # fmt: skip
    assert bench_proxy.main(args) == 0
    out = capsys.readouterr().out
    assert "3 plans at flops=0.5" in out
    rows = re.findall(r"^\| (\d+:\d+) \| (\S+) \| (\S+) \| (\d) of 3 \| ([\d.]+) \|$", out, re.M)
    assert [row[0] for row in rows] == ["1:0", "2:2"]
    for _, spearman, kendall, _, _ in rows:
        for value in (spearman, kendall):  # nan where a protocol scores every plan alike
            assert value == "nan" or -1.0 <= float(value) <= 1.0
    plans = re.findall(r"^\| (uniform|random \d) \| ([\d.]+) \|", out, re.M)
    assert [name for name, _ in plans] == ["uniform", "random 1", "random 2"]
    assert all(0.0 <= float(acc) <= 100.0 for _, acc in plans)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "latency=0.5"], "use a FLOPs or params target"),
        (["--protocols", "16-40"], "BN_BATCHES:STEPS pairs"),
        (["--protocols", "1:2:3"], "BN_BATCHES:STEPS pairs >= 0"),
        (["--plans", "2"], "at least 3"),
    ],
)
def test_bad_arguments_say_what_is_expected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_proxy.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
