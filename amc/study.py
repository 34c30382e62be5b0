"""The record of every search: one Optuna study per search, one trial per evaluation.

This is the only module that talks to Optuna storage. A study holds, as user attributes, all a
later command needs: the experiment config, the unit list, the model fingerprint, the dense
model's metrics, the objectives and the package versions. Each evaluation is one trial whose
params are the per-unit decisions, whose value(s) are the objective(s), and whose user attributes
hold the plan JSON, the agent, the episode, the proposal's info and every measured metric.

Storage URLs (see :func:`storage_from_url`): a SQLite file (default ``sqlite:///runs/amc.db``),
an Optuna journal file (``journal:///path/amc.log`` or any path ending in ``.log``), PostgreSQL
(``postgresql://user:password@host:5432/db``, through psycopg 3) or MySQL.

Values longer than MySQL's TEXT limit are split into chunks of at most 60,000 characters. Agent
checkpoints (:meth:`SearchRecord.save_agent_state`) are safetensors bytes, base64 text, in study
*system* attributes (kept out of the dashboard's user-attribute table), never pickle.

Example:
    >>> record = SearchRecord.create("sqlite:///runs/amc.db", "demo", ["maximize"],
    ...                              {"fingerprint": "sha256:...", "config": {...}})
    >>> number = record.start(proposal, agent="ddpg")
    >>> record.finish(number, result.to_json(), [reward])
    >>> record.best(1)[0].plan  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import hashlib
import json
import math
import platform
import re
import sqlite3
import struct
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from amc.errors import AmcError, ConfigError, UnknownNameError, did_you_mean
from amc.plan import PruningPlan

DEFAULT_STORAGE = "sqlite:///runs/amc.db"
STUDY_FORMAT = "amc.study/1"
AGENT_STATE_FORMAT = "amc.agent_state/1"
#: the longest JSON text stored in one attribute (MySQL's TEXT holds 65,535 bytes)
CHUNK_CHARS = 60_000
#: study user attributes amc writes or reads (the driver supplies all but the last three)
STUDY_ATTRS = (
    "config", "units", "fingerprint", "dense", "uniform", "objectives", "agent", "target",
    "format", "versions", "created",
)  # fmt: skip
_STORAGE_FORMS = (
    "sqlite:///runs/amc.db (a SQLite file, the default), journal:///path/to/amc.log or a path "
    "ending in .log (an Optuna journal file, for many processes on one host), "
    "postgresql://user:password@host:5432/db (PostgreSQL through psycopg 3), "
    "mysql+pymysql://user:password@host:3306/db"
)
_TRIAL_ATTRS = ("plan", "agent", "episode", "info")
_CHECKPOINT_KEY = "amc:agent_state"
_CHUNK_KEY = re.compile(r".+:chunk:\d+$")


class StorageURLError(AmcError, ValueError):
    """A storage URL of an unknown form."""


class StorageError(AmcError, RuntimeError):
    """A storage that cannot be opened or holds data amc cannot read."""


class StudyConflictError(AmcError, ValueError):
    """A study that exists already with another model, config or objectives."""


# --------------------------------------------------------------------------- storage URLs


def parse_storage_url(url: str | None) -> tuple[str, str]:
    """Split a storage URL into its kind and the target Optuna opens.

    Returns ``("sqlite" | "postgresql" | "mysql", sqlalchemy_url)`` or ``("journal", path)``.

    Example:
        >>> parse_storage_url("postgresql://amc:amc@127.0.0.1:5432/amc")
        ('postgresql', 'postgresql+psycopg://amc:amc@127.0.0.1:5432/amc')
    """
    url = (url or DEFAULT_STORAGE).strip()
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if path:
            return "journal", path
    elif url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return "sqlite", url
    elif url.startswith(("postgresql://", "postgres://")):
        return "postgresql", "postgresql+psycopg://" + url.split("://", 1)[1]
    elif url.startswith("postgresql+"):
        return "postgresql", url
    elif url.startswith(("mysql://", "mysql+")):
        return "mysql", url
    elif "://" not in url and url.endswith(".log"):
        return "journal", url
    elif "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        return "sqlite", "sqlite:///" + url
    raise StorageURLError(f"Unsupported storage URL {url!r}. Expected one of: {_STORAGE_FORMS}.")


def display_url(url: str | None) -> str:
    """The URL with any password masked, for messages and tables."""
    url = (url or DEFAULT_STORAGE).strip()
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def storage_from_url(url: str | None = None, *, create: bool = True) -> BaseStorage:
    """Open the Optuna storage a URL names, creating a SQLite or journal file where needed.

    SQLite files get a 30 s lock timeout, so several writers on one file wait rather than fail;
    their parent folder is created. Plain ``postgresql://`` uses the psycopg 3 driver. With
    ``create=False`` a missing SQLite or journal file is an error instead of a new empty one
    (reading commands must not leave files behind a typo).

    Example:
        >>> storage = storage_from_url("sqlite:///runs/amc.db")
    """
    kind, target = parse_storage_url(url)
    shown = display_url(url)
    file = target.removeprefix("sqlite:///") if kind == "sqlite" else target
    if kind in ("sqlite", "journal") and not create and not file.startswith((":memory:", "file:")):
        if not Path(file).is_file():
            raise StorageError(
                f"No storage at {shown}: {str(Path(file).resolve())!r} does not exist. Check "
                f"--storage, or start a search with `amc search` to create it."
            )
    if kind == "journal":
        path = Path(target)
        if path.is_dir():
            raise StorageURLError(
                f"Journal storage {shown!r} is a folder; name a file like amc.log."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if kind == "sqlite":
        if file == ":memory:" or file.startswith("file:"):
            engine_kwargs["connect_args"] = {"timeout": 30}
        else:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs["creator"] = functools.partial(_connect_sqlite, file)
    elif kind == "postgresql" and target.startswith("postgresql+psycopg://"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    last: Exception | None = None
    for attempt in range(3):  # two processes creating the tables of a new database may collide
        try:
            with _quiet_optuna():
                return RDBStorage(target, engine_kwargs=engine_kwargs)
        except ImportError as error:
            raise StorageError(
                f"Cannot open storage {shown}: its database driver is missing ({error}). "
                f"For PostgreSQL use postgresql://... (psycopg 3, installed with amc)."
            ) from error
        except Exception as error:  # SQLAlchemy's and Optuna's schema errors alike
            last = error
            if "upgrade" in str(error) or attempt == 2:
                break
            time.sleep(0.2 * (attempt + 1))
    raise StorageError(
        f"Cannot open storage {shown}: {last}. Check that the server is running and the URL "
        f"is right (for a local PostgreSQL run scripts/postgres.sh); for a schema written by "
        f"another Optuna version run `optuna storage upgrade --storage URL`."
    ) from last


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """A SQLite connection that waits 30 s for a lock and commits without an fsync each time.

    WAL mode lets readers work beside the one writer; ``synchronous=NORMAL`` keeps every
    commit that returned through a crash or kill of the process (only a power cut can lose
    the last few) and makes a commit ~10x cheaper than the default FULL on a slow disk.
    """
    connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TrialRecord:
    """One evaluation as stored: its plan, decisions, objective values and metrics.

    Attributes:
        number: the Optuna trial number (0, 1, ... per study).
        state: ``"COMPLETE"``, ``"FAIL"``, ``"RUNNING"`` (or another Optuna state name).
        values: the objective values, or None for a trial that did not complete.
        params: the per-unit decisions.
        plan_json: the plan as JSON, or None.
        agent, episode, info: the agent that proposed it, its episode and its info.
        metrics: everything the evaluator reported (accuracy, latency_ms, ..., status, error).
        started, finished: timestamps (naive, local time, as Optuna returns them).
    """

    number: int
    state: str
    values: tuple[float, ...] | None
    params: Mapping[str, float]
    plan_json: Mapping[str, Any] | None
    agent: str = ""
    episode: int | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    started: dt.datetime | None = None
    finished: dt.datetime | None = None

    @property
    def plan(self) -> PruningPlan | None:
        """The plan, parsed (None when the trial has none)."""
        return PruningPlan.from_json(self.plan_json) if self.plan_json else None

    @property
    def value(self) -> float | None:
        """The first objective value."""
        return self.values[0] if self.values else None

    @property
    def reason(self) -> str | None:
        """Why the trial failed (``"interrupted"``, ``"nan_loss"``, an exception class...)."""
        return self.metrics.get("reason")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "number": self.number,
            "state": self.state,
            "values": list(self.values) if self.values is not None else None,
            "params": dict(self.params),
            "plan": dict(self.plan_json) if self.plan_json else None,
            "agent": self.agent,
            "episode": self.episode,
            "info": dict(self.info),
            "metrics": dict(self.metrics),
            "started": self.started.isoformat() if self.started else None,
            "finished": self.finished.isoformat() if self.finished else None,
        }


class SearchRecord:
    """One search's Optuna study: create or open it, record trials, resume, query, checkpoint.

    The search driver is its only writer. Create with :meth:`create`, open with :meth:`open`.
    """

    def __init__(self, storage: BaseStorage, study_id: int, name: str, url: str) -> None:
        self._storage = storage
        self._study_id = study_id
        self.name = name
        self.storage_url = url
        self.directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
        self._attrs = _decode_attrs(storage.get_study_user_attrs(study_id))
        version = self._attrs.get("format")
        if version is not None and version != STUDY_FORMAT:
            raise StudyConflictError(
                f"Study {name!r} has format {version!r}; this amc reads {STUDY_FORMAT!r}. "
                f"Open it with the amc version that wrote it."
            )

    # ----------------------------------------------------------------------- create / open

    @classmethod
    def create(
        cls,
        storage_url: str | None,
        study_name: str,
        directions: Sequence[str],
        attrs: Mapping[str, Any],
        *,
        resume: bool = False,
    ) -> SearchRecord:
        """Create the study for a new search, or open it again when that is safe.

        Args:
            storage_url: where (see :func:`storage_from_url`); None for the default.
            study_name: the study's name.
            directions: ``"maximize"`` or ``"minimize"`` per objective.
            attrs: JSON-ready study attributes: ``config``, ``units``, ``fingerprint``,
                ``dense`` (metrics), ``objectives`` (names, one per direction), ``agent``,
                ``target``, optionally ``uniform`` (``{"plan": ..., "metrics": ...}``).
                Package versions, the format and the creation time are added.
            resume: allow an existing study with another config (the new attrs replace the
                stored ones); the model fingerprint and directions must still match.

        An existing study with the same fingerprint, config and directions is opened, so the
        same search run twice continues rather than fails.
        """
        if not study_name or not isinstance(study_name, str):
            raise ConfigError(f"A study name must be a non-empty string, got {study_name!r}.")
        directions = list(directions)
        bad = [d for d in directions if d not in ("maximize", "minimize")]
        if not directions or bad:
            raise ConfigError(
                f"Objective directions must be 'maximize' or 'minimize', got {directions!r}."
            )
        objectives = attrs.get("objectives")
        if objectives is not None and len(objectives) != len(directions):
            raise ConfigError(
                f"{len(objectives)} objective names {list(objectives)!r} for "
                f"{len(directions)} directions {directions!r}; give one name per direction."
            )
        storage = storage_from_url(storage_url)
        url = display_url(storage_url)
        try:
            with _quiet_optuna():
                study_id = storage.create_new_study(
                    [optuna.study.StudyDirection[d.upper()] for d in directions], study_name
                )
        except optuna.exceptions.DuplicatedStudyError:
            record = cls(storage, storage.get_study_id_from_name(study_name), study_name, url)
            record._check_compatible(directions, attrs, resume)
            if resume:
                for key, value in attrs.items():
                    record.set_attr(key, value)
            return record
        values = {
            **dict(attrs),
            "format": STUDY_FORMAT,
            "versions": package_versions(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        for key, value in values.items():
            for part_key, part in _encode_attr(key, value):
                storage.set_study_user_attr(study_id, part_key, part)
        if objectives:
            # What Study.set_metric_names writes (experimental API), so the dashboard names axes.
            storage.set_study_system_attr(study_id, "study:metric_names", list(objectives))
        return cls(storage, study_id, study_name, url)

    @classmethod
    def open(cls, storage_url: str | None, study_name: str) -> SearchRecord:
        """Open an existing study; an unknown name lists the close ones.

        Example:
            >>> record = SearchRecord.open("sqlite:///runs/amc.db", "demo")
        """
        storage = storage_from_url(storage_url, create=False)
        study_id = _study_id(storage, study_name, storage_url)
        return cls(storage, study_id, study_name, display_url(storage_url))

    @property
    def attrs(self) -> dict[str, Any]:
        """The study's user attributes (config, units, fingerprint, dense, versions, ...)."""
        return dict(self._attrs)

    @property
    def objectives(self) -> list[str]:
        """The objective names, one per direction."""
        names = self._attrs.get("objectives")
        if names and len(names) == len(self.directions):
            return [str(name) for name in names]
        return (
            ["value"]
            if len(self.directions) == 1
            else [f"value {i}" for i in range(len(self.directions))]
        )

    def set_attr(self, key: str, value: Any) -> None:
        """Write one study user attribute (JSON-ready; long values are chunked)."""
        for part_key, part in _encode_attr(key, value):
            self._storage.set_study_user_attr(self._study_id, part_key, part)
        self._attrs[key] = json.loads(json.dumps(value))

    # ----------------------------------------------------------------------- trials

    def start(self, proposal: Any, agent: str | None = None) -> int:
        """Record a proposal as a RUNNING trial and return its number.

        ``proposal`` is an ``agents.base.Proposal`` (plan, params, episode, info). The trial is
        created in one write with its params and user attributes ``plan``, ``agent``,
        ``episode`` and ``info``.
        """
        params: dict[str, float] = {}
        distributions: dict[str, FloatDistribution] = {}
        for name, raw in proposal.params.items():
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(f"Param {name!r} of episode {proposal.episode} is {value}.")
            params[name] = value
            distributions[name] = FloatDistribution(min(0.0, value), max(1.0, value))
        plan = proposal.plan
        attrs: dict[str, Any] = {
            "plan": plan.to_json() if isinstance(plan, PruningPlan) else dict(plan),
            "agent": agent if agent is not None else str(self._attrs.get("agent", "")),
            "episode": int(proposal.episode),
            "info": json.loads(json.dumps(dict(proposal.info))),
        }
        user_attrs = dict(
            part for key, value in attrs.items() for part in _encode_attr(key, value)
        )
        template = FrozenTrial(
            number=0,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=dt.datetime.now(),
            datetime_complete=None,
            params=params,
            distributions=dict(distributions),
            user_attrs=user_attrs,
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )
        trial_id = self._storage.create_new_trial(self._study_id, template_trial=template)
        return self._storage.get_trial_number_from_id(trial_id)

    def finish(
        self, trial_number: int, result: Mapping[str, Any], values: Sequence[float] | None
    ) -> None:
        """Close a RUNNING trial: COMPLETE with ``values``, or FAIL when ``values`` is None.

        Every key of ``result`` (an ``EvalResult.to_json()``) with a value other than None
        becomes a trial user attribute.
        A failed trial gets a ``reason`` (from the result, else its status, else "failed").
        Non-finite values fail the trial with reason "non_finite_value".
        """
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(
            self._study_id, trial_number
        )
        state = self._storage.get_trial(trial_id).state
        if state.is_finished():
            raise StudyConflictError(
                f"Trial {trial_number} of study {self.name!r} is already {state.name}; "
                f"a trial is finished once."
            )
        metrics = json.loads(json.dumps(dict(result)))
        if values is not None:
            values = [float(v) for v in values]
            if len(values) != len(self.directions):
                raise ValueError(
                    f"Trial {trial_number}: {len(values)} values for "
                    f"{len(self.directions)} objectives {self.objectives}."
                )
            if not all(math.isfinite(v) for v in values):
                metrics["reason"] = metrics.get("reason") or "non_finite_value"
                metrics["values"] = [str(v) for v in values]
                values = None
        if values is None:
            metrics["reason"] = metrics.get("reason") or metrics.get("status") or "failed"
            if metrics.get("status") in (None, "ok"):
                metrics["status"] = "failed"
        for key, value in metrics.items():
            if value is None:  # absent metrics (fidelity with labels, error when ok) cost nothing
                continue
            name = f"result_{key}" if key in _TRIAL_ATTRS else key
            for part_key, part in _encode_attr(name, value):
                self._storage.set_trial_user_attr(trial_id, part_key, part)
        if values is None:
            self._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        else:
            self._storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values)

    def fail(self, trial_number: int, reason: str, error: str | None = None) -> None:
        """Close a RUNNING trial as FAIL with a reason (and error text)."""
        self.finish(trial_number, {"status": "failed", "reason": reason, "error": error}, None)

    def recover_running(self) -> list[dict[str, Any]]:
        """Fail the trials a crash left RUNNING (reason "interrupted") and return them.

        Returns one dict per such trial, oldest first, with what the driver needs to re-run it:
        ``trial`` (number), ``plan`` (JSON), ``params``, ``episode``, ``agent`` and ``info``.
        """
        recovered = []
        for trial in self.trials((TrialState.RUNNING,)):
            self.finish(trial.number, {"status": "failed", "reason": "interrupted"}, None)
            recovered.append(
                {
                    "trial": trial.number,
                    "plan": dict(trial.plan_json or {}),
                    "params": dict(trial.params),
                    "episode": trial.episode,
                    "agent": trial.agent,
                    "info": dict(trial.info),
                }
            )
        return recovered

    def trials(self, states: Sequence[TrialState] | None = None) -> list[TrialRecord]:
        """All trials (or those in ``states``), by number."""
        frozen = self._storage.get_all_trials(
            self._study_id, deepcopy=False, states=tuple(states) if states else None
        )
        return [_trial_record(trial) for trial in sorted(frozen, key=lambda t: t.number)]

    def completed(self) -> list[TrialRecord]:
        """The COMPLETE trials, by number."""
        return self.trials((TrialState.COMPLETE,))

    def finished(self) -> list[TrialRecord]:
        """The COMPLETE and FAIL trials, by number."""
        return self.trials((TrialState.COMPLETE, TrialState.FAIL))

    def count_completed(self) -> int:
        """How many trials completed."""
        return len(
            self._storage.get_all_trials(
                self._study_id, deepcopy=False, states=(TrialState.COMPLETE,)
            )
        )

    def best(self, n: int = 1) -> list[TrialRecord]:
        """The ``n`` best completed trials by the first objective (ties: earlier first)."""
        sign = -1.0 if self.directions[0] == "maximize" else 1.0
        ranked = sorted(self.completed(), key=lambda t: (sign * (t.value or 0.0), t.number))
        return ranked[:n]

    def pareto_front(self) -> list[TrialRecord]:
        """The non-dominated completed trials (Optuna's ``best_trials``), by number."""
        study = optuna.load_study(study_name=self.name, storage=self._storage)
        numbers = {trial.number for trial in study.best_trials}
        return [trial for trial in self.completed() if trial.number in numbers]

    # ----------------------------------------------------------------------- agent checkpoints

    def save_agent_state(self, state: Mapping[str, Any], episode: int | None = None) -> None:
        """Checkpoint an agent: tensors as safetensors, the rest as JSON, no pickle.

        The blob goes, base64-encoded in chunks of at most 60,000 characters, into one of two
        alternating slots of study system attributes; the pointer naming the slot is written
        last, so a crash mid-save leaves the previous checkpoint intact. ``episode`` (default:
        ``state["episode"]``) is kept beside it. Saving an unchanged state writes nothing.
        """
        if episode is None and isinstance(state.get("episode"), int):
            episode = int(state["episode"])
        blob = encode_agent_state(state)
        digest = hashlib.sha256(blob).hexdigest()
        current = self._checkpoint_pointer()
        if current and current.get("sha256") == digest and current.get("episode") == episode:
            return
        slot = 1 - int(current["slot"]) if current else 0
        text = base64.b64encode(blob).decode("ascii")
        pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
        for index, piece in enumerate(pieces):
            self._storage.set_study_system_attr(
                self._study_id, f"{_CHECKPOINT_KEY}:{slot}:{index}", piece
            )
        pointer: dict[str, Any] = {
            "format": AGENT_STATE_FORMAT,
            "slot": slot,
            "chunks": len(pieces),
            "bytes": len(blob),
            "sha256": digest,
            "episode": episode,
            "saved": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self._storage.set_study_system_attr(self._study_id, _CHECKPOINT_KEY, pointer)

    def load_agent_state(self) -> dict[str, Any] | None:
        """The last checkpoint written by :meth:`save_agent_state`, or None when there is none."""
        attrs = self._storage.get_study_system_attrs(self._study_id)
        pointer = attrs.get(_CHECKPOINT_KEY)
        if not pointer:
            return None
        if pointer.get("format") != AGENT_STATE_FORMAT:
            raise StorageError(
                f"The agent checkpoint of study {self.name!r} has format "
                f"{pointer.get('format')!r}; this amc reads {AGENT_STATE_FORMAT!r}."
            )
        slot = pointer["slot"]
        try:
            text = "".join(
                attrs[f"{_CHECKPOINT_KEY}:{slot}:{i}"] for i in range(pointer["chunks"])
            )
        except KeyError as error:
            raise StorageError(
                f"The agent checkpoint of study {self.name!r} is incomplete (missing {error})."
            ) from None
        blob = base64.b64decode(text)
        if hashlib.sha256(blob).hexdigest() != pointer["sha256"]:
            raise StorageError(
                f"The agent checkpoint of study {self.name!r} does not match its checksum; "
                f"resume without it (the agent restarts from the stored trials)."
            )
        return decode_agent_state(blob)

    def checkpoint_episode(self) -> int | None:
        """The episode counter saved with the last agent checkpoint (None: no checkpoint)."""
        pointer = self._checkpoint_pointer()
        return pointer.get("episode") if pointer else None

    def _checkpoint_pointer(self) -> dict[str, Any] | None:
        pointer = self._storage.get_study_system_attrs(self._study_id).get(_CHECKPOINT_KEY)
        return dict(pointer) if pointer else None

    def _check_compatible(
        self, directions: list[str], attrs: Mapping[str, Any], resume: bool
    ) -> None:
        where = f"Study {self.name!r} in {self.storage_url}"
        if directions != self.directions:
            raise StudyConflictError(
                f"{where} exists with objective directions {self.directions}, not {directions}. "
                f"Pick a new name with --study NAME."
            )
        stored, given = self._attrs.get("fingerprint"), attrs.get("fingerprint")
        if stored and given and stored != given:
            raise StudyConflictError(
                f"{where} was made for model {stored}, not {given} (their layer names or shapes "
                f"differ). Pick a new name with --study NAME."
            )
        if resume:
            return
        differences = _differences(self._attrs.get("config"), attrs.get("config"))
        if differences:
            raise StudyConflictError(
                f"{where} exists with a different configuration ({'; '.join(differences)}). "
                f"Resume it with `amc resume {self.name}`, or pick a new name with --study NAME."
            )


def list_studies(storage_url: str | None = None) -> list[dict[str, Any]]:
    """One row per study: name, directions, objectives, agent, counts, best value(s), created.

    Counts: ``complete``, ``fail`` (failed evaluations), ``over_budget`` (plans measured over
    the target, which Optuna holds as FAIL too) and ``running``.

    ``best`` is the best value (single objective) or the best value per objective (several);
    ``created`` is a timezone-aware datetime or None.
    """
    storage = storage_from_url(storage_url, create=False)
    rows = []
    for study in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(study.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        counts = {state: 0 for state in ("COMPLETE", "FAIL", "RUNNING")}
        over_budget = 0  # FAIL trials measured over the target: recorded, not episodes
        for trial in trials:
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
            if trial.state == TrialState.FAIL:
                over_budget += trial.user_attrs.get("status") == "over_budget"
        directions = [d.name.lower() for d in study.directions]
        done = [t.values for t in trials if t.state == TrialState.COMPLETE and t.values]
        best: list[float] = []
        for index, direction in enumerate(directions):
            column = [values[index] for values in done]
            if column:
                best.append(max(column) if direction == "maximize" else min(column))
        attrs = _decode_attrs(study.user_attrs)
        created = attrs.get("created")
        rows.append(
            {
                "name": study.study_name,
                "directions": directions,
                "objectives": attrs.get("objectives"),
                "agent": attrs.get("agent"),
                "complete": counts["COMPLETE"],
                "fail": counts["FAIL"] - over_budget,
                "over_budget": over_budget,
                "running": counts["RUNNING"],
                "best": (best[0] if len(directions) == 1 else best) if best else None,
                "created": dt.datetime.fromisoformat(created) if created else None,
            }
        )
    return rows


def delete_study(storage_url: str | None, study_name: str) -> None:
    """Delete a study and all its trials (unknown names list the close ones)."""
    storage = storage_from_url(storage_url, create=False)
    storage.delete_study(_study_id(storage, study_name, storage_url))


def _study_id(storage: BaseStorage, study_name: str, storage_url: str | None) -> int:
    """The id of ``study_name``; an unknown name lists the close ones."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        names = [study.study_name for study in storage.get_all_studies()]
        raise unknown_study(study_name, names, storage_url) from None
    return study_id


def unknown_study(name: str, names: Sequence[str], storage_url: str | None) -> UnknownNameError:
    """The error for a study name that is not in the storage."""
    url = display_url(storage_url)
    names = sorted(names)
    if names:
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        where = f"Studies there: {shown}."
    else:
        where = "That storage holds no studies yet; start one with `amc search`."
    return UnknownNameError(
        f"Unknown study {name!r} in {url}.{did_you_mean(name, names)} {where} "
        f"List them with `amc studies --storage {url}`."
    )


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a study's results depend on."""
    versions = {"python": platform.python_version()}
    for dist in ("amc", "torch", "optuna", "torch-pruning", "stable-baselines3", "ray"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


# --------------------------------------------------------------------------- agent state codec


def encode_agent_state(state: Mapping[str, Any]) -> bytes:
    """Nested dicts/lists of JSON values and tensors -> safetensors bytes (JSON in metadata)."""
    import safetensors.torch
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            if value.is_sparse:
                raise TypeError(f"Agent state {path}: sparse tensors cannot be stored.")
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().to("cpu").contiguous().clone()
            return {"$tensor": name}
        if isinstance(value, Mapping):
            if set(value) == {"$tensor"}:
                raise TypeError(f"Agent state {path}: the key '$tensor' is reserved.")
            for key in value:
                if not isinstance(key, str):
                    raise TypeError(f"Agent state {path}: key {key!r} is not a string.")
            return {key: walk(item, f"{path}.{key}") for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item, f"{path}[{i}]") for i, item in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy scalar
            return value.item()
        raise TypeError(
            f"Agent state {path}: {type(value).__name__} is neither JSON nor a tensor; convert it "
            f"(e.g. numpy arrays with torch.from_numpy)."
        )

    skeleton = walk(dict(state), "state")
    text = json.dumps({"format": AGENT_STATE_FORMAT, "state": skeleton})
    return safetensors.torch.save(tensors, metadata={"amc": text})


def decode_agent_state(blob: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode_agent_state` (tuples come back as lists)."""
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + size])
    document = json.loads(header.get("__metadata__", {}).get("amc", "null") or "null")
    if not isinstance(document, dict) or document.get("format") != AGENT_STATE_FORMAT:
        raise StorageError(
            f"An agent checkpoint is not in format {AGENT_STATE_FORMAT!r}; resume without it."
        )
    import safetensors.torch

    tensors = safetensors.torch.load(blob)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$tensor"}:
                return tensors[value["$tensor"]]
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result = walk(document["state"])
    assert isinstance(result, dict)  # encode_agent_state always stores a dict
    return result


# --------------------------------------------------------------------------- helpers


def _encode_attr(key: str, value: Any) -> list[tuple[str, Any]]:
    """``[(key, value)]``, or chunks of its JSON text then a pointer when it is too long."""
    text = json.dumps(value)
    if len(text) <= CHUNK_CHARS:
        return [(key, value)]
    pieces = []
    start = 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        while len(json.dumps(text[start:end])) > CHUNK_CHARS:  # escapes lengthen the JSON
            end = start + max(1, (end - start) * 3 // 4)
        pieces.append(text[start:end])
        start = end
    parts: list[tuple[str, Any]] = [(f"{key}:chunk:{i}", piece) for i, piece in enumerate(pieces)]
    return [*parts, (key, {"$chunks": len(pieces)})]


def _decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Reassemble chunked attributes and drop the chunks."""
    result = {}
    for key, value in raw.items():
        if _CHUNK_KEY.match(key):
            continue
        if isinstance(value, dict) and set(value) == {"$chunks"}:
            text = "".join(raw.get(f"{key}:chunk:{i}", "") for i in range(value["$chunks"]))
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise StorageError(f"Attribute {key!r} is incomplete in storage.") from error
        result[key] = value
    return result


def _trial_record(trial: FrozenTrial) -> TrialRecord:
    attrs = _decode_attrs(trial.user_attrs)
    metrics = {key: value for key, value in attrs.items() if key not in _TRIAL_ATTRS}
    for key in _TRIAL_ATTRS:
        if f"result_{key}" in metrics:
            metrics[key] = metrics.pop(f"result_{key}")
    episode = attrs.get("episode")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        values=tuple(trial.values) if trial.values is not None else None,
        params=dict(trial.params),
        plan_json=attrs.get("plan"),
        agent=str(attrs.get("agent") or ""),
        episode=int(episode) if episode is not None else None,
        info=dict(attrs.get("info") or {}),
        metrics=metrics,
        started=trial.datetime_start,
        finished=trial.datetime_complete,
    )


def _differences(stored: Any, given: Any, prefix: str = "", limit: int = 5) -> list[str]:
    """Up to ``limit`` 'key: old -> new' lines between two JSON values."""
    if json.dumps(stored, sort_keys=True) == json.dumps(given, sort_keys=True):
        return []
    if isinstance(stored, Mapping) and isinstance(given, Mapping):
        lines: list[str] = []
        for key in sorted(set(stored) | set(given)):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += _differences(stored.get(key), given.get(key), name, limit - len(lines))
            if len(lines) >= limit:
                break
        return lines[:limit]
    return [f"{prefix or 'config'}: {_short(stored)} -> {_short(given)}"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines ("A new study created...") and experimental warnings."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
