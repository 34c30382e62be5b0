"""README.md's code: every shell command in it is run by a named test or script, and its Python
blocks run as written.

When a command is added to or changed in the README, add it to ``EXERCISED`` with the test (or
the script CI runs) that runs it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SMOKE = "scripts/cluster_smoke.sh"
CLI_TOUR = "tests/amc/test_cli_tour.py::"
TOUR = f"{CLI_TOUR}test_tour_study_commands_use_runs_amc_db_in_the_working_folder"

#: each README shell command -> the test ("path::function") or script ("path", with a fragment
#: of the command it runs) that exercises it
EXERCISED: dict[str, str | tuple[str, str]] = {
    "bash scripts/setup.sh": ("scripts/test.sh", "bash scripts/setup.sh"),
    "amc search": f"{CLI_TOUR}test_search_without_a_config_reads_the_shipped_demo",
    "bash scripts/test.sh": (".ci/run", "bash scripts/test.sh"),
    "amc units resnet20": "tests/amc/test_cli.py::test_units_json_lists_units_in_execution_order",
    "amc bench resnet20 --keep 0.5": (
        "tests/amc/test_cli.py::test_bench_json_compares_dense_with_a_uniform_plan"
    ),
    "amc studies": TOUR,
    "amc show STUDY --plots runs/STUDY/plots": TOUR,
    "amc export STUDY --out plan.json": TOUR,
    "amc apply plan.json --model resnet20 --weights W --input-shape 1,32,32 --data digits "
    "--finetune-steps 200 --rounds 4 --out runs/pruned": TOUR,
    "amc dashboard": f"{CLI_TOUR}test_dashboard_serves_the_storage_on_localhost_only",
    "ray start --head --node-ip-address=HEAD_IP --port=6379 --dashboard-host=127.0.0.1": (
        SMOKE,
        "ray start --head --node-ip-address=127.0.0.1 --port=",
    ),
    "amc search exp.yaml --address auto --storage postgresql://user:pw@db/amc": (
        SMOKE,
        "amc search exp.yaml --address auto",
    ),
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- amc search exp.yaml "
    "--address auto --storage postgresql://user:pw@db/amc": (
        SMOKE,
        'ray job submit --address "http://127.0.0.1:$dashboard" --working-dir . --',
    ),
    "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0": (SMOKE, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"),
    "export RAY_ADDRESS=127.0.0.1:6379": (SMOKE, 'export RAY_ADDRESS="127.0.0.1:$port"'),
}


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def shell_commands() -> list[str]:
    """Each command of the README's bash blocks: continuations joined, comments and the
    ``.venv/bin/`` prefix dropped, ``&&`` chains split."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0]
            for command in line.split("&&"):
                command = " ".join(command.split()).removeprefix(".venv/bin/")
                if command:
                    commands.append(command)
    return commands


def test_every_readme_command_is_exercised_by_a_test_or_a_ci_script() -> None:
    commands = shell_commands()
    assert len(commands) >= 10  # the parse found the blocks
    missing = [command for command in commands if command not in EXERCISED]
    assert missing == [], "README commands with no test: add them to EXERCISED"
    assert set(EXERCISED) == set(commands), "EXERCISED names commands the README no longer has"
    for command, where in EXERCISED.items():
        if isinstance(where, tuple):
            path, fragment = where
            assert fragment in (ROOT / path).read_text(encoding="utf-8"), (command, where)
        else:
            path, _, function = where.partition("::")
            source = (ROOT / path).read_text(encoding="utf-8")
            assert f"\ndef {function}(" in source, (command, where)


def test_python_blocks_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the first block saves plan.json
    python = blocks("python")
    assert len(python) == 2
    namespace: dict[str, object] = {}
    for block in python:  # one namespace: the second block uses the first one's model
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    flops_ratio, latency_ms = (float(line) for line in capsys.readouterr().out.split())
    assert 0.2 < flops_ratio < 0.6 and latency_ms > 0
    assert (tmp_path / "plan.json").is_file()
    env = namespace["env"]
    assert env.spec is not None and env.spec.id == "amc/Pruning-v0"  # type: ignore[attr-defined]
