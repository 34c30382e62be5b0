"""experiments/bench_service.py: the end-of-budget tail it reports apart from service overhead."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from amc.study import TrialRecord
from experiments import bench_service


def _trial(number: int, worker: str | None, finished_s: float | None) -> TrialRecord:
    start = dt.datetime(2026, 12, 6, 4, 0, 0)
    finished = None if finished_s is None else start + dt.timedelta(seconds=finished_s)
    metrics = {"worker": worker} if worker else {}
    return TrialRecord(number, "COMPLETE", (0.5,), {}, None, metrics=metrics, finished=finished)


def test_tail_is_each_workers_idle_time_after_its_last_trial() -> None:
    trials = [
        _trial(0, "host:1", 5.0),
        _trial(1, "host:2", 6.0),
        _trial(2, "host:1", 10.0),
        _trial(3, "host:2", 13.5),  # the search's last trial
    ]
    # host:1 idles from 10.0 to 13.5; host:2 ran the last trial
    assert bench_service.tail_idle(trials) == 3.5


def test_one_worker_or_no_worker_names_has_no_tail() -> None:
    assert bench_service.tail_idle([_trial(0, "host:1", 5.0), _trial(1, "host:1", 9.0)]) == 0.0
    assert bench_service.tail_idle([_trial(0, None, 5.0), _trial(1, "host:2", None)]) == 0.0
    assert bench_service.tail_idle([]) == 0.0


def test_report_file_holds_the_machine_and_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "results" / "service.md"
    tables = "| workers | evals/min |\n|---|---|\n| 1 | 11.9 |"
    bench_service.write_report(path, tables, ["--episodes", "12"])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Service benchmark — ")
    assert "Command: `python experiments/bench_service.py --episodes 12`" in text
    assert "Versions: python " in text and "torch " in text
    assert text.endswith(tables + "\n")
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_out_must_be_a_markdown_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_service.main(["--out", str(tmp_path / "service.txt")])
    assert exit_info.value.code == 2
    assert "--out must name a .md file" in capsys.readouterr().err
