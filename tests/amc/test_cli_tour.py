"""The README's five-minute tour as a user types it: the study commands on the default storage
(``runs/amc.db`` in the working folder), ``amc search`` with no CONFIG, and ``amc dashboard``
serving the storage on 127.0.0.1.

The study is tests/amc/test_cli.py's ``lenet-demo`` (trials 0 and 1 complete, 2 failed).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import torch

from amc.checkpoint import save_weights
from amc.cli import DEMO
from amc.plan import PruningPlan
from tests.amc.test_cli import MODEL, SHAPE, _console_script, run, study  # noqa: F401
from tests.tiny_models import LeNet


def test_tour_study_commands_use_runs_amc_db_in_the_working_folder(
    capsys: pytest.CaptureFixture[str],
    study: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "runs").mkdir()
    # A copy of the study where the tour looks (SQLite's backup: the file is in WAL mode).
    with (
        closing(sqlite3.connect(study.removeprefix("sqlite:///"))) as source,
        closing(sqlite3.connect(tmp_path / "runs" / "amc.db")) as copy,
    ):
        source.backup(copy)
    monkeypatch.chdir(tmp_path)

    code, out, err = run(capsys, "studies")
    assert (code, err) == (0, "")
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
    # study, agent, objectives, complete, failed, running, ...
    assert [row[:6] for row in rows if row] == [
        ["lenet-demo", "uniform", "accuracy (max)", "2", "1", "0"]
    ]

    code, out, err = run(capsys, "show", "lenet-demo", "--plots", "runs/lenet-demo/plots")
    assert (code, err) == (0, "")
    assert "best (trial 1)" in out
    plots = sorted(os.listdir(tmp_path / "runs" / "lenet-demo" / "plots"))
    assert plots == ["keep_ratios.png", "pareto.png", "search_curve.png", "summary.md"]

    code, out, err = run(capsys, "export", "lenet-demo", "--out", "plan.json")
    assert (code, out, err) == (0, "wrote plan.json (trial 1)\n", "")

    torch.manual_seed(0)
    save_weights(LeNet(), tmp_path / "W.safetensors")
    code, out, err = run(
        capsys, "apply", "plan.json", "--model", MODEL, "--weights", "W.safetensors", *SHAPE,
        "--data", "digits", "--finetune-steps", "2", "--rounds", "2", "--out", "runs/pruned",
    )  # fmt: skip
    assert code == 0, err  # stderr holds the progress bars
    assert "pruned by plan.json in 2 rounds" in " ".join(out.split())
    pruned = tmp_path / "runs" / "pruned"
    assert sorted(os.listdir(pruned)) == [
        "manifest.json", "plan.json", "program.pt2", "weights.safetensors"
    ]  # fmt: skip
    assert PruningPlan.load(pruned / "plan.json").units == PruningPlan.load("plan.json").units


def test_search_without_a_config_reads_the_shipped_demo(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no experiments/demo.yaml here: the shipped one is read
    code, out, err = run(capsys, "search", "--target", "flops=2")
    assert (code, out) == (2, "")
    assert " ".join(err.split()).startswith(
        f"error: {DEMO}: 'target': expected METRIC=FRACTION with METRIC flops, params or latency"
    )
    assert os.listdir(tmp_path) == []  # bad input writes nothing, not even runs/


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_json(url: str, process: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                assert response.status == 200
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None:
                raise AssertionError(
                    f"amc dashboard exited ({process.returncode}): {process.stderr.read()}"
                ) from None
            assert time.monotonic() < deadline, f"nothing answered at {url}"
            time.sleep(0.2)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (Linux /proc; hex as the kernel writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_dashboard_serves_the_storage_on_localhost_only(
    study: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [_console_script(), "dashboard", "--storage", study, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        studies = _get_json(f"http://127.0.0.1:{port}/api/studies", process)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["lenet-demo"]
        if os.path.exists("/proc/net/tcp"):
            assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1 and nothing else
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert f"optuna-dashboard on http://127.0.0.1:{port} (Ctrl-C to stop)" in out
