"""`amc search` and `amc resume` as a user runs them: kill -9, Ctrl-C, resume, bad input.

The searches run the installed console script in a subprocess (in-process evaluation,
``--workers 0``) sharing one baseline with tests/amc/test_search.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amc.cli import main
from amc.study import SearchRecord
from tests.amc.test_search import CONFIG, runs_dir  # noqa: F401 - the shared baseline

AMC = str(Path(sys.executable).with_name("amc"))
WARMUP = 1


def sigma_at(episode: int) -> float:
    return 0.5 * 0.95 ** (episode - WARMUP)


@pytest.fixture
def config_file(tmp_path: Path, runs_dir: Path) -> Path:  # noqa: F811
    path = tmp_path / "tiny.yaml"
    path.write_text(f"{CONFIG}runs_dir: {runs_dir}\n", encoding="utf-8")
    return path


@pytest.fixture
def slow_config_file(tmp_path: Path, runs_dir: Path) -> Path:  # noqa: F811
    """The tiny experiment with ~1 s evaluations (40 fine-tune steps), so that a kill sent
    once a trial is seen RUNNING lands before that trial ends."""
    path = tmp_path / "slow.yaml"
    text = CONFIG.replace("finetune: {steps: 0,", "finetune: {steps: 40,")
    assert text != CONFIG
    path.write_text(f"{text}runs_dir: {runs_dir}\n", encoding="utf-8")
    return path


def start_search(tmp_path: Path, config_file: Path, study: str, *extra: str) -> tuple[Any, str]:
    storage = f"sqlite:///{tmp_path}/amc.db"
    args = [AMC, "search", str(config_file), "--study", study, "--storage", storage]
    args += ["--workers", "0", "--quiet", *extra]
    process = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, storage


def wait_until(condition: Callable[[], bool], process: Any, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"amc exited early ({process.returncode}): {process.stderr.read()}"
            )
        assert time.monotonic() < deadline, "the search made no progress"
        time.sleep(0.05)


def mid_search(storage: str, study: str) -> Callable[[], bool]:
    """True once a trial completed, the agent is checkpointed and a trial is running."""

    records: list[SearchRecord] = []

    def check() -> bool:
        if not records:
            try:
                records.append(SearchRecord.open(storage, study))
            except Exception:  # noqa: BLE001 - not created yet
                return False
        record = records[0]
        states = [t.state for t in record.trials()]
        return (
            "COMPLETE" in states
            and states[-1] == "RUNNING"
            and record.checkpoint_episode() is not None
        )

    return check


def test_kill_9_then_resume_ends_with_exactly_n_episodes(
    tmp_path: Path,
    slow_config_file: Path,
    runs_dir: Path,  # noqa: F811
) -> None:
    process, storage = start_search(tmp_path, slow_config_file, "killed")
    wait_until(mid_search(storage, "killed"), process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    record = SearchRecord.open(storage, "killed")
    before = record.trials()
    assert before[-1].state == "RUNNING"
    checkpoint = record.load_agent_state()
    assert checkpoint is not None
    assert checkpoint["sigma"] == pytest.approx(sigma_at(checkpoint["episode"]))
    asked = max(t.episode for t in before) + 1

    done = subprocess.run(
        [AMC, "resume", "killed", "--storage", storage, "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 episodes recorded in study 'killed'" in " ".join(done.stdout.split())
    trials = SearchRecord.open(storage, "killed").trials()
    assert "RUNNING" not in {t.state for t in trials}
    completed = [t for t in trials if t.state == "COMPLETE"]
    assert sorted(t.episode for t in completed) == [0, 1, 2, 3]  # each episode exactly once
    failed = [t for t in trials if t.state == "FAIL"]
    assert [(t.number, t.reason) for t in failed] == [(before[-1].number, "interrupted")]
    rerun = [t for t in completed if t.number > before[-1].number][0]
    assert rerun.plan_json == before[-1].plan_json  # the interrupted plan ran again
    new = [t for t in completed if t.episode >= asked]
    assert new, "the resumed agent proposed nothing new"
    for trial in new:  # episode counter and noise sigma go on where they were
        assert trial.info["sigma"] == pytest.approx(sigma_at(trial.episode))
    after = SearchRecord.open(storage, "killed").load_agent_state()
    assert after is not None
    assert (after["episode"], after["sigma"]) == (4, pytest.approx(sigma_at(4)))
    assert after["n_updates"] > checkpoint["n_updates"]
    assert (runs_dir / "killed" / "best_plan.json").is_file()


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(
    tmp_path: Path, config_file: Path
) -> None:
    process, storage = start_search(tmp_path, config_file, "stopped", "--episodes", "20")
    wait_until(mid_search(storage, "stopped"), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    message = " ".join(err.split())
    assert (
        "stopped; in-flight trials were recorded as failed and the agent checkpointed. "
        f"Continue with: amc resume stopped --storage {storage}"
    ) in message
    assert "Traceback" not in err
    record = SearchRecord.open(storage, "stopped")
    trials = record.trials()
    assert "RUNNING" not in {t.state for t in trials}
    # The signal lands during an evaluation (then it is failed) or just between two.
    assert all(t.state == "COMPLETE" for t in trials[:-1]) and len(trials) < 20
    assert (trials[-1].state, trials[-1].reason) in {("FAIL", "interrupted"), ("COMPLETE", None)}
    state = record.load_agent_state()
    assert state is not None and state["episode"] == max(t.episode for t in trials) + 1


# -- bad input: exit code 2, one message, nothing written -------------------------------------


def error_of(capsys: pytest.CaptureFixture[str], *args: Any) -> str:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, ""), captured
    assert captured.err.startswith("error: ")
    return " ".join(captured.err.removeprefix("error: ").split())


@pytest.mark.parametrize(
    ("args", "yaml", "expected"),
    [
        (
            ["--agent", "ddgp"],
            "",
            "Unknown agent 'ddgp'. Did you mean 'ddpg'? Expected one of: cmaes, ddpg, "
            "global_magnitude, nsga2, random, tpe, uniform.",
        ),
        (
            [],
            "episodez: 3\n",
            "{path}: unknown key 'episodez'. Did you mean 'episodes'? Known keys here: ",
        ),
        (
            ["--target", "flops=2"],
            "",
            "{path}: 'target': expected METRIC=FRACTION with METRIC flops, params or latency "
            "and FRACTION in (0, 1], e.g. latency=0.5 (got 'flops=2').",
        ),
        (
            [],
            "ray: {isolation: measurement}\n",
            "{path}: 'ray.isolation': unknown value 'measurement'. Did you mean 'measurements'? "
            "Expected one of: exclusive, measurements.",
        ),
        (
            [],
            "criterion: l3\n",
            "{path}: 'criterion': unknown value 'l3'. Did you mean 'l2'? Expected one of: l1, "
            "l2, bn_scale, taylor, activation.",
        ),
        (
            ["--target", "energy=0.5"],
            "",
            "{path}: 'target': expected METRIC=FRACTION with METRIC flops, params or latency "
            "and FRACTION in (0, 1], e.g. latency=0.5 (got 'energy=0.5').",
        ),
    ],
)
def test_bad_search_input_exits_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    yaml: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(f"{CONFIG}{yaml}runs_dir: {tmp_path}/runs\n", encoding="utf-8")
    storage = tmp_path / "amc.db"
    message = error_of(capsys, "search", path, *args, "--storage", f"sqlite:///{storage}")
    expected = expected.format(path=path)
    assert message.startswith(expected) if expected.endswith(": ") else message == expected
    assert not storage.exists() and not (tmp_path / "runs").exists()


def test_resume_of_an_unknown_study_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    storage = tmp_path / "none.db"
    message = error_of(capsys, "resume", "nope", "--storage", f"sqlite:///{storage}")
    assert re.match(r"No storage at sqlite:///.*none\.db: .* does not exist\.", message)
    assert not storage.exists()
