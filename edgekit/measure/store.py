"""Results: flat records of one variant's measurements, kept in a SQLite file.

A result is written the moment its variant finishes, so an interrupted sweep keeps what it
measured. The raw timed repetitions behind a row's speed figures (:mod:`edgekit.measure.speed`) are kept in
their own table, ``repetitions``, one row per timed generation (its round, its place in the round,
TTFT, decode rate, per-token gaps and contention reading), read back with
:meth:`ResultStore.repetitions`. Each carries its settings and the environment it ran in (hardware, library
versions, git revision) so runs from yesterday or another machine can be laid side by side.
The file's layout is versioned (SQLite's ``PRAGMA user_version``): opening a store applies the
migrations it lacks in one transaction, so a store is never left half migrated, and a store
written by a newer edgekit is refused rather than misread.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import sqlite3
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import pandas as pd
import psutil
import torch

from edgekit.core import __version__
from edgekit.core.cpu_features import cpu_model
from edgekit.core.errors import InputError
from edgekit.core.paths import work_dir
from edgekit.models.load import UNKNOWN_REVISION, model_revision

# Rows written before revisions were recorded read back as "unknown".
REVISION_COLUMN = f"model_revision TEXT NOT NULL DEFAULT '{UNKNOWN_REVISION}'"
# MIGRATIONS[i] takes a store from layout version i to i + 1; the last one's index + 1 is this edgekit's
MIGRATIONS = (
    """CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    metrics TEXT NOT NULL,
    settings TEXT NOT NULL,
    environment TEXT NOT NULL
)""",
    f"ALTER TABLE results ADD COLUMN {REVISION_COLUMN}",
    # the speed protocol's raw repetitions (edgekit.measure.speed), one row per timed generation
    """CREATE TABLE IF NOT EXISTS repetitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    round INTEGER NOT NULL,
    round_order INTEGER NOT NULL,
    ttft_ms REAL NOT NULL,
    decode_tokens_per_s REAL NOT NULL,
    contended INTEGER,
    gaps_ms TEXT NOT NULL,
    contention TEXT NOT NULL
)""",
)


def default_store_path() -> Path:
    return work_dir() / "results.sqlite"


def new_run_id() -> str:
    """A short id shared by the results of one run (one comparison, one sweep)."""
    return uuid.uuid4().hex[:12]


@dataclass
class Result:
    model: str
    variant: str
    metrics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=lambda: environment())
    kind: str = "compare"          # compare, sensitivity, tuning, batching, streaming...
    status: str = "ok"             # ok or error
    error: str | None = None
    run_id: str = field(default_factory=new_run_id)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    model_revision: str | None = None  # None: fingerprint ``model``'s weights now (see loading.model_revision)
    repetitions: list = field(default_factory=list)  # edgekit.measure.speed.Repetition dicts, written to their own
                                                     # table

    def __post_init__(self) -> None:
        if self.model_revision is None:
            self.model_revision = model_revision(self.model)

    def flat(self) -> dict:
        """One row: identity columns, then every metric, then settings prefixed ``setting_``."""
        row = {"run_id": self.run_id, "created": self.created, "kind": self.kind, "model": self.model,
               "model_revision": self.model_revision, "variant": self.variant, "status": self.status,
               "error": self.error}
        row.update(self.metrics)
        for task, values in (row.pop("tasks", None) or {}).items():  # one column per task and figure
            row.update({f"{task}.{k}": v for k, v in values.items() if k != "task_doc_ids"})
        row.update({f"setting_{k}": v for k, v in self.settings.items()})
        return row


class ResultStore:
    """A SQLite file of results. ``ResultStore()`` opens the default one under the work folder."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    def _migrate(self) -> None:
        """Bring the file to this edgekit's layout version, all steps in one transaction."""
        db = self._connect()
        db.isolation_level = None  # explicit transaction: DDL and the version change commit together
        try:
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:  # unversioned: a new file, or a store written before versions were recorded
                columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
                version = 0 if not columns else 2 if "model_revision" in columns else 1
            if version > len(MIGRATIONS):
                raise InputError(f"{self.path} was written by a newer edgekit (store layout {version}, this one "
                                 f"reads up to {len(MIGRATIONS)}); upgrade edgekit or use another store")
            for statement in MIGRATIONS[version:]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add(self, result: Result) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO results (run_id, created, kind, model, model_revision, variant, status, error, metrics,"
                " settings, environment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.run_id, result.created, result.kind, result.model, result.model_revision, result.variant,
                 result.status, result.error, json.dumps(result.metrics), json.dumps(result.settings, default=str),
                 json.dumps(result.environment)))
            db.executemany(
                "INSERT INTO repetitions (run_id, model, variant, round, round_order, ttft_ms, decode_tokens_per_s,"
                " contended, gaps_ms, contention) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(result.run_id, result.model, result.variant, r["round"], r["order"], r["ttft_ms"],
                  r["decode_tokens_per_s"], r["contended"], json.dumps(r["gaps_ms"]), json.dumps(r["contention"]))
                 for r in result.repetitions])

    def repetitions(self, run_id: str | None = None, variant: str | None = None) -> pd.DataFrame:
        """The raw timed repetitions behind the speed figures, one row each, in the order they were written."""
        clauses = [(c, v) for c, v in (("run_id", run_id), ("variant", variant)) if v is not None]
        where = (" WHERE " + " AND ".join(f"{c} = ?" for c, _ in clauses)) if clauses else ""
        with self._connect() as db:
            frame = pd.read_sql_query(f"SELECT * FROM repetitions{where} ORDER BY id", db,
                                      params=[v for _, v in clauses])
        for column in ("gaps_ms", "contention"):
            frame[column] = frame[column].map(json.loads)
        frame["contended"] = frame["contended"].map(lambda v: None if pd.isna(v) else bool(v))
        return frame.drop(columns="id")

    def results(self, model: str | None = None, run_id: str | None = None, kind: str | None = None) -> list[Result]:
        query, args = ("SELECT run_id, created, kind, model, variant, status, error, metrics, settings, environment,"
                       " model_revision FROM results"), []
        clauses = [(c, v) for c, v in (("model", model), ("run_id", run_id), ("kind", kind)) if v is not None]
        if clauses:
            query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in clauses)
            args = [v for _, v in clauses]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        return [Result(run_id=r[0], created=r[1], kind=r[2], model=r[3], variant=r[4], status=r[5], error=r[6],
                       metrics=json.loads(r[7]), settings=json.loads(r[8]), environment=json.loads(r[9]),
                       model_revision=r[10])
                for r in rows]

    def runs(self) -> pd.DataFrame:
        """One row per run: when, which model (and which weights of it), how many variants."""
        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT run_id, MIN(created) AS created, kind, model, model_revision, COUNT(*) AS variants FROM "
                "results "
                "GROUP BY run_id ORDER BY MIN(id)", db)

    def dataframe(self, **filters) -> pd.DataFrame:
        return results_frame(self.results(**filters))

    def export(self, path: str | os.PathLike, **filters) -> Path:
        """Write the results as CSV or JSON, chosen by the file's suffix."""
        path = Path(path)
        if path.suffix == ".csv":
            self.dataframe(**filters).to_csv(path, index=False)
        else:
            path.write_text(json.dumps([asdict(r) for r in self.results(**filters)], indent=1))
        return path


def results_frame(results: list[Result]) -> pd.DataFrame:
    return pd.DataFrame([r.flat() for r in results])


@lru_cache(maxsize=1)
def environment() -> dict:
    """Hardware, library versions and git revision, recorded with every result."""



    versions = {}
    for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "optimum", "optimum-onnx", "onnx",
                 "onnxruntime", "openvino", "nncf", "llama_cpp_python"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    env = {"edgekit": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "memory_bytes": psutil.virtual_memory().total,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "git_revision": _git_revision(), "versions": versions}
    return env


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
