"""Benchmark history in SQLite: every run appended with its fingerprint, for comparing devices later.

The file is marked as ours with ``PRAGMA application_id`` and versioned with ``PRAGMA user_version``;
``MIGRATIONS[i]`` brings a database from version i to i + 1. A file that is not SQLite, a SQLite
database of something else, or one written by a newer edgepose is refused in one sentence and never
written to. ``check_db`` runs before the benchmark so a bad ``--db`` costs no measuring time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepose.bench.timing import STAGES, STATS
from edgepose.errors import DataError, UsageError

#: "EPBH" (edgepose benchmark history) as a 32-bit integer
APPLICATION_ID = 0x45504248
SQLITE_HEADER = b"SQLite format 3\x00"


def _v0_to_v1(con: sqlite3.Connection) -> None:
    con.execute(
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created TEXT NOT NULL,
            bundle TEXT NOT NULL,
            model TEXT, runtime TEXT, precision TEXT, mode TEXT,
            device TEXT, device_name TEXT, cpu TEXT, cores INTEGER, os TEXT,
            busy INTEGER NOT NULL DEFAULT 0,
            fps REAL, first_frame_ms REAL,
            json TEXT NOT NULL
        )"""
    )
    cols = ", ".join(f"{s} REAL" for s in STATS)
    con.execute(
        f"""CREATE TABLE stages (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            stage TEXT NOT NULL, {cols},
            PRIMARY KEY (run_id, stage)
        )"""
    )


def _v1_to_v2(con: sqlite3.Connection) -> None:
    """v2: batch size and timer overhead as columns (v1 kept them only in the JSON blob)."""
    con.execute("ALTER TABLE runs ADD COLUMN batch INTEGER NOT NULL DEFAULT 1")
    con.execute("ALTER TABLE runs ADD COLUMN timer_overhead_ms REAL")
    rows = con.execute("SELECT id, json FROM runs").fetchall()
    for run_id, blob in rows:
        run = json.loads(blob)
        con.execute(
            "UPDATE runs SET batch = ?, timer_overhead_ms = ? WHERE id = ?",
            (int(run.get("batch", 1)), run.get("timer_overhead_ms"), run_id),
        )
    con.execute("CREATE INDEX runs_model ON runs(model)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1, _v1_to_v2]
SCHEMA_VERSION = len(MIGRATIONS)


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _inspect(con: sqlite3.Connection, path: Path) -> int:
    """The schema version of an edgepose history, 0 for an empty database; refuses anything else."""
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        version = con.execute("PRAGMA user_version").fetchone()[0]
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise DataError(f"{path} is not a usable SQLite database ({e}); give another --db file") from e
    if app_id == 0 and version == 0 and tables == 0:
        return 0
    if app_id != APPLICATION_ID:
        raise DataError(
            f"{path} is a SQLite database but not an edgepose benchmark history; give another --db file"
        )
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{path} has benchmark-history schema version {version}, newer than this edgepose reads "
            f"({SCHEMA_VERSION}); upgrade edgepose or give another --db file"
        )
    return version


def check_db(path: str | Path) -> None:
    """Refuse, before any measuring, a --db that cannot be read as our history or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--db {path} is a folder; give a file name such as bench.sqlite")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"cannot write --db {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --db {path}: folder {parent} is not writable")
    if not path.exists():
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise UsageError(f"cannot write --db {path}: the file is not writable")
    if path.stat().st_size and not _is_sqlite(path):
        raise DataError(f"{path} is not a SQLite database; give another --db file (it was left untouched)")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        _inspect(con, path)
    finally:
        con.close()


def connect(path: str | Path, write: bool = True) -> sqlite3.Connection:
    """Open (creating or migrating when ``write``) the history at ``path``."""
    path = Path(path)
    if write:
        check_db(path)
    elif not path.is_file():
        raise UsageError(f"no benchmark history at {path}; run `edgepose bench ... --db {path}` first")
    elif path.stat().st_size and not _is_sqlite(path):
        raise DataError(f"{path} is not a SQLite database; give the file that `edgepose bench --db` wrote")
    uri = f"file:{path}?mode={'rwc' if write else 'ro'}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        version = _inspect(con, path)
        if write and version < SCHEMA_VERSION:
            migrate(con, version)
        elif not write and version < SCHEMA_VERSION:
            raise DataError(
                f"{path} has schema version {version}; run `edgepose bench --db {path}` once to upgrade it"
            )
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT around DDL too (the sqlite3 module's implicit transactions skip CREATE/ALTER)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: sqlite3.Connection, version: int) -> None:
    """Apply every migration after ``version`` in one transaction: all of them or none."""
    with _transaction(con):
        for step in MIGRATIONS[version:]:
            step(con)
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def append_runs(path: str | Path, runs: Iterable[dict[str, Any]]) -> list[int]:
    """Add runs (the ``--json`` run records) and their stage rows; returns the new run ids."""
    con = connect(path, write=True)
    ids = []
    try:
        with _transaction(con):
            for run in runs:
                fp = run["fingerprint"]
                cur = con.execute(
                    """INSERT INTO runs (created, bundle, model, runtime, precision, mode, device,
                    device_name, cpu, cores, os, busy, fps, first_frame_ms, json, batch, timer_overhead_ms)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        run.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        run["bundle"],
                        fp.get("model"),
                        run["runtime"],
                        run["precision"],
                        run["mode"],
                        fp.get("device"),
                        fp.get("device_name"),
                        fp.get("cpu"),
                        fp.get("cores"),
                        fp.get("os"),
                        int(bool(fp.get("busy"))),
                        run["fps"],
                        run["first_frame_ms"],
                        json.dumps(run),
                        int(run.get("batch", 1)),
                        run.get("timer_overhead_ms"),
                    ),
                )
                run_id = int(cur.lastrowid)
                ids.append(run_id)
                for stage in STAGES:
                    figures = run["stages"][stage]
                    con.execute(
                        f"INSERT INTO stages VALUES (?, ?, {', '.join('?' * len(STATS))})",
                        (run_id, stage, *(figures[s] for s in STATS)),
                    )
    except sqlite3.Error as e:
        raise UsageError(f"cannot write benchmark history {path}: {e}") from e
    finally:
        con.close()
    return ids


def read_runs(path: str | Path, last: int | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Runs in the order they were recorded (the ``last`` newest, of ``model`` when given)."""
    if last is not None and last < 1:
        raise UsageError(f"--last must be 1 or more, not {last}")
    con = connect(path, write=False)
    try:
        sql = "SELECT id, created, json FROM runs"
        args: list[Any] = []
        if model is not None:
            sql += " WHERE model = ?"
            args.append(model)
        sql += " ORDER BY id DESC"
        if last is not None:
            sql += " LIMIT ?"
            args.append(last)
        rows = con.execute(sql, args).fetchall()
        runs = []
        for run_id, created, blob in reversed(rows):
            run = json.loads(blob)
            run["id"], run["created"] = run_id, created
            run["stages"] = {
                stage: dict(zip(STATS, values))
                for stage, *values in con.execute(
                    f"SELECT stage, {', '.join(STATS)} FROM stages WHERE run_id = ?", (run_id,)
                )
            }
            runs.append(run)
    except sqlite3.DatabaseError as e:
        raise DataError(f"cannot read benchmark history {path}: {e}") from e
    finally:
        con.close()
    return runs
