"""amc.study: the Optuna record of a search, on SQLite, a journal file and PostgreSQL alike."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from amc.errors import UnknownNameError
from amc.plan import PruningPlan, UnitPlan
from amc.study import (
    CHUNK_CHARS,
    SearchRecord,
    StorageError,
    StorageURLError,
    StudyConflictError,
    decode_agent_state,
    delete_study,
    display_url,
    list_studies,
    parse_storage_url,
    storage_from_url,
)

POSTGRES = os.environ.get("AMC_TEST_POSTGRES")
UNITS = ["conv1", "layer1.0.conv1", "fc1"]
ATTRS = {
    "fingerprint": "sha256:0123456789abcdef",
    "config": {"agent": "ddpg", "episodes": 10, "target": {"metric": "flops", "fraction": 0.5}},
    "units": [{"name": name, "channels": 8} for name in UNITS],
    "dense": {"accuracy": 0.9, "latency_ms": 2.0, "flops": 1e6, "params": 1e4},
    "objectives": ["reward"],
    "agent": "ddpg",
}


@dataclass(frozen=True)
class FakeProposal:
    """What agents.base.Proposal carries (amc does not import agents)."""

    plan: PruningPlan
    params: dict[str, float]
    episode: int
    info: dict[str, Any] = field(default_factory=dict)


def proposal(episode: int, keep: float = 0.5) -> FakeProposal:
    units = {name: UnitPlan(keep_ratio=keep, channels=round(8 * keep)) for name in UNITS}
    plan = PruningPlan(units=units, model=ATTRS["fingerprint"])
    return FakeProposal(plan, {n: keep for n in UNITS}, episode, {"actions": [keep] * 3})


def result(accuracy: float = 0.8, latency: float = 1.0) -> dict[str, Any]:
    return {
        "status": "ok", "accuracy": accuracy, "loss": 0.5, "fidelity": None,
        "latency_ms": latency, "latency_iqr_ms": 0.01, "flops": 5e5, "params": 5e3,
        "size_bytes": 20000, "finetune_steps": 0, "times": {"prune": 0.1}, "error": None,
        "reason": None,
    }  # fmt: skip


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL on a schema of this test session's own, dropped at the end."""
    import psycopg

    if not POSTGRES:
        pytest.skip(POSTGRES_SKIP)
    schema = f"amc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"create schema {schema}")
    try:
        # Test data need no durability: commits skip the server's fsync.
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f"drop schema {schema} cascade")


POSTGRES_SKIP = (
    "AMC_TEST_POSTGRES is unset: run scripts/postgres.sh and export "
    "AMC_TEST_POSTGRES=<the URL it prints> to test PostgreSQL storage"
)


@pytest.fixture(
    params=[
        "sqlite",
        "journal",
        pytest.param(
            "postgres",
            marks=[pytest.mark.postgres, pytest.mark.skipif(not POSTGRES, reason=POSTGRES_SKIP)],
        ),
    ]
)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty storage of each kind (PostgreSQL: emptied after each test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/runs/amc.db"
    elif request.param == "journal":
        yield f"journal://{tmp_path}/runs/amc.log"
    else:
        url = request.getfixturevalue("postgres_schema")
        assert not list_studies(url), "the PostgreSQL test schema is not empty"
        yield url
        for row in list_studies(url):
            delete_study(url, row["name"])


def test_storage_urls_map_to_optuna_storages() -> None:
    assert parse_storage_url(None) == ("sqlite", "sqlite:///runs/amc.db")
    assert parse_storage_url("journal:///tmp/a.log") == ("journal", "/tmp/a.log")
    assert parse_storage_url("journal://runs/a.log") == ("journal", "runs/a.log")
    assert parse_storage_url("runs/amc.log") == ("journal", "runs/amc.log")
    assert parse_storage_url("runs/amc.db") == ("sqlite", "sqlite:///runs/amc.db")
    assert parse_storage_url("postgresql://u:p@h:5432/d") == (
        "postgresql", "postgresql+psycopg://u:p@h:5432/d"
    )  # fmt: skip
    assert parse_storage_url("postgresql+psycopg://u@h/d")[1] == "postgresql+psycopg://u@h/d"
    assert parse_storage_url("mysql+pymysql://u:p@h/d") == ("mysql", "mysql+pymysql://u:p@h/d")


def test_bad_url_names_the_expected_forms() -> None:
    expected = (
        "Unsupported storage URL 'redis://localhost'. Expected one of: sqlite:///runs/amc.db "
        "(a SQLite file, the default), journal:///path/to/amc.log or a path ending in .log (an "
        "Optuna journal file, for many processes on one host), "
        "postgresql://user:password@host:5432/db (PostgreSQL through psycopg 3), "
        "mysql+pymysql://user:password@host:3306/db."
    )
    with pytest.raises(StorageURLError, match=f"^{re.escape(expected)}$"):
        storage_from_url("redis://localhost")


def test_default_sqlite_creates_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    SearchRecord.create(None, "demo", ["maximize"], ATTRS)
    assert (tmp_path / "runs" / "amc.db").is_file()


def test_create_and_open_keep_the_study_attributes(storage_url: str) -> None:
    created = SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS)
    record = SearchRecord.open(storage_url, "demo")
    attrs = record.attrs
    for key, value in ATTRS.items():
        assert attrs[key] == value
    assert attrs["format"] == "amc.study/1"
    assert attrs["versions"]["optuna"].startswith("5.") and "torch" in attrs["versions"]
    assert record.directions == ["maximize"] and record.objectives == ["reward"]
    assert created.attrs == attrs


def test_create_refuses_another_config_or_model_unless_resuming(storage_url: str) -> None:
    SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS)
    assert SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS).name == "demo"
    changed = {**ATTRS, "config": {**ATTRS["config"], "episodes": 20}}
    message = (
        f"Study 'demo' in {display_url(storage_url)} exists with a different configuration "
        "(episodes: 10 -> 20). Resume it with `amc resume demo`, or pick a new name with "
        "--study NAME."
    )
    with pytest.raises(StudyConflictError, match=f"^{re.escape(message)}$"):
        SearchRecord.create(storage_url, "demo", ["maximize"], changed)
    resumed = SearchRecord.create(storage_url, "demo", ["maximize"], changed, resume=True)
    assert resumed.attrs["config"]["episodes"] == 20
    assert SearchRecord.open(storage_url, "demo").attrs["config"]["episodes"] == 20
    other_model = {**changed, "fingerprint": "sha256:ffffffffffffffff"}
    with pytest.raises(StudyConflictError, match="was made for model sha256:0123456789abcdef"):
        SearchRecord.create(storage_url, "demo", ["maximize"], other_model, resume=True)
    with pytest.raises(StudyConflictError, match="directions"):
        two = {**ATTRS, "objectives": ["accuracy", "latency_ms"]}
        SearchRecord.create(storage_url, "demo", ["maximize", "minimize"], two, resume=True)


def test_unknown_study_suggests_the_closest_name(storage_url: str) -> None:
    for name in ("resnet20-ddpg", "vgg11-tpe"):
        SearchRecord.create(storage_url, name, ["maximize"], ATTRS)
    url = display_url(storage_url)
    message = (
        f"Unknown study 'resnet20-dpg' in {url}. Did you mean 'resnet20-ddpg'? "
        f"Studies there: resnet20-ddpg, vgg11-tpe. List them with `amc studies --storage {url}`."
    )
    with pytest.raises(UnknownNameError, match=f"^{re.escape(message)}$"):
        SearchRecord.open(storage_url, "resnet20-dpg")


def test_unknown_study_in_an_empty_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    storage_from_url(url)
    message = (
        f"Unknown study 'demo' in {url}. That storage holds no studies yet; start one with "
        f"`amc search`. List them with `amc studies --storage {url}`."
    )
    with pytest.raises(UnknownNameError, match=f"^{re.escape(message)}$"):
        SearchRecord.open(url, "demo")


@pytest.mark.parametrize("kind", ["sqlite:///", "journal://"])
def test_reading_a_missing_file_creates_nothing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "typo" / ("amc.db" if kind == "sqlite:///" else "amc.log")
    message = (
        f"No storage at {kind}{path}: '{path}' does not exist. Check --storage, or start a "
        f"search with `amc search` to create it."
    )
    with pytest.raises(StorageError, match=f"^{re.escape(message)}$"):
        SearchRecord.open(f"{kind}{path}", "demo")
    with pytest.raises(StorageError, match=f"^{re.escape(message)}$"):
        list_studies(f"{kind}{path}")
    assert not (tmp_path / "typo").exists()


def test_passwords_are_masked_in_messages() -> None:
    with pytest.raises(Exception, match=r"postgresql://amc:\*\*\*@127\.0\.0\.1:1/amc") as info:
        storage_from_url("postgresql://amc:secret@127.0.0.1:1/amc")
    assert "secret" not in str(info.value)


def test_trials_record_plan_params_and_metrics(storage_url: str) -> None:
    record = SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS)
    first = record.start(proposal(0, 0.5), agent="ddpg")
    second = record.start(proposal(1, 0.75))
    assert (first, second) == (0, 1)
    record.finish(first, result(0.8), [0.8])
    record.finish(second, {**result(), "status": "failed", "reason": "nan_loss"}, None)
    third = record.start(proposal(2))
    record.fail(third, "RuntimeError", "RuntimeError: boom")
    fourth = record.start(proposal(3))
    record.finish(fourth, result(), [float("nan")])

    trials = SearchRecord.open(storage_url, "demo").trials()
    assert [t.state for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    done = trials[0]
    assert done.values == (0.8,) and done.params == {n: 0.5 for n in UNITS}
    assert done.plan == proposal(0, 0.5).plan
    assert (done.agent, done.episode, dict(done.info)) == ("ddpg", 0, {"actions": [0.5] * 3})
    assert done.metrics == {k: v for k, v in result(0.8).items() if v is not None}
    assert trials[1].agent == "ddpg"  # the study's agent by default
    assert (trials[1].reason, trials[1].metrics["status"]) == ("nan_loss", "failed")
    assert (trials[2].reason, trials[2].metrics["error"]) == ("RuntimeError", "RuntimeError: boom")
    assert trials[3].reason == "non_finite_value" and trials[3].values is None
    assert record.count_completed() == 1 and [t.number for t in record.completed()] == [0]
    with pytest.raises(StudyConflictError, match="^Trial 0 of study 'demo' is already COMPLETE"):
        record.finish(first, result(), [0.9])


def test_recover_running_fails_and_returns_interrupted_trials(storage_url: str) -> None:
    record = SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS)
    numbers = [record.start(proposal(episode, 0.25 * (episode + 1))) for episode in range(3)]
    record.finish(numbers[1], result(), [0.7])
    del record  # the driver dies here (kill -9): nothing else is written

    reopened = SearchRecord.open(storage_url, "demo")
    recovered = reopened.recover_running()
    assert [r["trial"] for r in recovered] == [0, 2]
    assert [r["episode"] for r in recovered] == [0, 2]
    assert PruningPlan.from_json(recovered[1]["plan"]) == proposal(2, 0.75).plan
    assert recovered[0]["params"] == {n: 0.25 for n in UNITS}
    assert recovered[0]["info"] == {"actions": [0.25] * 3} and recovered[0]["agent"] == "ddpg"
    states = [(t.state, t.reason) for t in SearchRecord.open(storage_url, "demo").trials()]
    assert states == [("FAIL", "interrupted"), ("COMPLETE", None), ("FAIL", "interrupted")]
    assert reopened.recover_running() == []
    assert reopened.start(proposal(0, 0.25)) == 3  # the re-run is a new trial


def test_best_and_pareto_front(storage_url: str) -> None:
    single = SearchRecord.create(storage_url, "single", ["maximize"], ATTRS)
    for episode, reward in enumerate([0.5, 0.9, 0.7]):
        single.finish(single.start(proposal(episode)), result(reward), [reward])
    assert [t.number for t in single.best(2)] == [1, 2]
    assert [t.number for t in single.pareto_front()] == [1]

    attrs = {**ATTRS, "objectives": ["accuracy", "latency_ms"]}
    multi = SearchRecord.create(storage_url, "multi", ["maximize", "minimize"], attrs)
    for episode, (accuracy, latency) in enumerate([(0.9, 2.0), (0.8, 1.0), (0.7, 1.5)]):
        multi.finish(
            multi.start(proposal(episode)), result(accuracy, latency), [accuracy, latency]
        )
    assert [t.number for t in multi.pareto_front()] == [0, 1]
    assert multi.objectives == ["accuracy", "latency_ms"]
    assert [t.number for t in multi.best(3)] == [0, 1, 2]


def test_list_studies_counts_trials(storage_url: str) -> None:
    record = SearchRecord.create(storage_url, "a", ["maximize"], ATTRS)
    record.finish(record.start(proposal(0)), result(), [0.6])
    record.fail(record.start(proposal(1)), "nan_loss")
    record.start(proposal(2))
    over = {**result(), "status": "over_budget", "reason": "over_budget"}
    record.finish(record.start(proposal(3)), over, None)  # Optuna's FAIL, counted apart
    SearchRecord.create(storage_url, "b", ["maximize", "minimize"], {**ATTRS, "objectives": None})
    rows = {row["name"]: row for row in list_studies(storage_url)}
    assert sorted(rows) == ["a", "b"]
    a = rows["a"]
    assert (a["complete"], a["fail"], a["over_budget"], a["running"]) == (1, 1, 1, 1)
    assert a["best"] == 0.6
    assert a["directions"] == ["maximize"] and a["agent"] == "ddpg"
    assert a["created"] is not None and a["created"].tzinfo is not None
    assert (rows["b"]["best"], rows["b"]["directions"]) == (None, ["maximize", "minimize"])
    delete_study(storage_url, "b")
    assert [row["name"] for row in list_studies(storage_url)] == ["a"]


def test_agent_state_round_trip_without_pickle(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pickle(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "dumps", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Pickler", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    torch.manual_seed(0)
    state = {
        "format": "ddpg/1",
        "episode": 7,
        "sigma": 0.4,
        "rng": {"state": {"int": "123456789012345678901234567890"}},
        "actor": {"0.weight": torch.randn(300, 40), "0.bias": torch.zeros(300)},
        "optimizer": {
            "state": {"0": {"step": torch.tensor(5.0), "exp_avg": torch.randn(3, 2)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
        },
        "steps": [torch.arange(4, dtype=torch.int64), None, True, "text"],
    }
    record = SearchRecord.create(storage_url, "demo", ["maximize"], ATTRS)
    assert record.load_agent_state() is None and record.checkpoint_episode() is None
    record.save_agent_state(state)
    loaded = SearchRecord.open(storage_url, "demo").load_agent_state()
    assert loaded is not None
    assert torch.equal(loaded["actor"]["0.weight"], state["actor"]["0.weight"])
    assert torch.equal(loaded["optimizer"]["state"]["0"]["step"], torch.tensor(5.0))
    assert torch.equal(loaded["steps"][0], torch.arange(4))
    assert loaded["steps"][0].dtype == torch.int64 and loaded["steps"][1:] == [None, True, "text"]
    assert loaded["optimizer"]["param_groups"] == [
        {"lr": 1e-3, "betas": [0.9, 0.999], "params": [0]}
    ]
    assert {k: loaded[k] for k in ("format", "episode", "sigma", "rng")} == {
        k: state[k] for k in ("format", "episode", "sigma", "rng")
    }
    assert record.checkpoint_episode() == 7

    # Stored as JSON text: base64 chunks of safetensors bytes, at most CHUNK_CHARS each.
    raw = record._storage.get_study_system_attrs(record._study_id)
    pointer = raw["amc:agent_state"]
    chunks = [raw[f"amc:agent_state:{pointer['slot']}:{i}"] for i in range(pointer["chunks"])]
    assert pointer["chunks"] == 2 and all(len(json.dumps(c)) <= CHUNK_CHARS + 2 for c in chunks)
    blob = base64.b64decode("".join(chunks), validate=True)
    assert blob[8:9] == b"{"  # a safetensors JSON header, not a pickle stream (b"\x80")
    assert decode_agent_state(blob)["episode"] == 7

    # A second save goes to the other slot; an unchanged state writes nothing.
    record.save_agent_state({**state, "episode": 8})
    assert record._checkpoint_pointer()["slot"] == 1 - pointer["slot"]  # type: ignore[index]
    before = record._checkpoint_pointer()
    record.save_agent_state({**state, "episode": 8})
    assert record._checkpoint_pointer() == before
    reloaded = SearchRecord.open(storage_url, "demo").load_agent_state()
    assert reloaded is not None and reloaded["episode"] == 8


def test_agent_state_refuses_what_json_cannot_hold(tmp_path: Path) -> None:
    record = SearchRecord.create(f"sqlite:///{tmp_path}/a.db", "demo", ["maximize"], ATTRS)
    with pytest.raises(TypeError, match=r"^Agent state state\.net: object is neither JSON"):
        record.save_agent_state({"net": object()})
    with pytest.raises(TypeError, match=r"^Agent state state: key 1 is not a string\.$"):
        record.save_agent_state({1: 2})  # type: ignore[dict-item]


def test_long_attributes_are_chunked(storage_url: str) -> None:
    units = [
        {"name": f"blocks.{i}.mlp.fc1", "channels": 3072, "kind": "linear"} for i in range(2000)
    ]
    record = SearchRecord.create(storage_url, "big", ["maximize"], {**ATTRS, "units": units})
    raw = record._storage.get_study_user_attrs(record._study_id)
    assert raw["units"] == {"$chunks": 3}
    assert all(len(json.dumps(value)) <= CHUNK_CHARS for value in raw.values())
    assert SearchRecord.open(storage_url, "big").attrs["units"] == units
    assert [row["name"] for row in list_studies(storage_url)] == ["big"]


def test_two_searches_write_one_storage_at_once(storage_url: str) -> None:
    n_trials = 8
    errors: list[BaseException] = []

    def search(name: str) -> None:
        try:
            record = SearchRecord.create(storage_url, name, ["maximize"], ATTRS)
            for episode in range(n_trials):
                number = record.start(proposal(episode))
                record.finish(number, result(episode / n_trials), [episode / n_trials])
            record.save_agent_state({"episode": n_trials, "w": torch.full((4,), float(n_trials))})
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=search, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name in ("left", "right"):
        record = SearchRecord.open(storage_url, name)
        trials = record.trials()
        assert [t.state for t in trials] == ["COMPLETE"] * n_trials
        assert [t.episode for t in trials] == list(range(n_trials))
        assert record.load_agent_state()["episode"] == n_trials  # type: ignore[index]
