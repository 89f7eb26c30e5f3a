"""Results: flat records of one variant's measurements, kept in a SQLite file.

A result is written the moment its variant finishes, so an interrupted sweep keeps what it
measured. Each carries its settings and the environment it ran in (hardware, library
versions, git revision) so runs from yesterday or another machine can be laid side by side.
"""
from __future__ import annotations

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

import edgekit
from edgekit.cpu_features import cpu_model
from edgekit.data import work_dir
from edgekit.loading import UNKNOWN_REVISION, model_revision

# Rows written before revisions were recorded read back as "unknown".
REVISION_COLUMN = f"model_revision TEXT NOT NULL DEFAULT '{UNKNOWN_REVISION}'"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    {REVISION_COLUMN},
    variant TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    metrics TEXT NOT NULL,
    settings TEXT NOT NULL,
    environment TEXT NOT NULL
)"""


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

    def __post_init__(self) -> None:
        if self.model_revision is None:
            self.model_revision = model_revision(self.model)

    def flat(self) -> dict:
        """One row: identity columns, then every metric, then settings prefixed ``setting_``."""
        row = {"run_id": self.run_id, "created": self.created, "kind": self.kind, "model": self.model,
               "model_revision": self.model_revision, "variant": self.variant, "status": self.status, "error": self.error}
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
        with self._connect() as db:
            db.execute(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
            if "model_revision" not in columns:  # a store written before revisions were recorded
                db.execute(f"ALTER TABLE results ADD COLUMN {REVISION_COLUMN}")

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
                "SELECT run_id, MIN(created) AS created, kind, model, model_revision, COUNT(*) AS variants FROM results "
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
    import importlib.metadata as md

    import psutil
    import torch


    versions = {}
    for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "optimum", "optimum-onnx", "onnx",
                 "onnxruntime", "openvino", "nncf", "llama_cpp_python"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    env = {"edgekit": edgekit.__version__, "python": platform.python_version(), "platform": platform.platform(),
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
