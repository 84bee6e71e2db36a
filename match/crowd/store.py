"""Durable crowd state: tasks, HITs, votes, workers, gold and money, in one SQLite file.

``<MATCH_DATA_DIR>/crowd.sqlite3`` (WAL, so the web app and ``match crowd sync`` can
share it). The tables::

    tasks        one row per task (function, name unique among live tasks; a deleted
                 task keeps its row for the report, with deleted = 1)
    hits         our HIT key (task id + sequence), the MTurk HITId once known, the gold
                 pair it carries, its token; state intent -> open -> done -> deleted
    extensions   one row per CreateAdditionalAssignmentsForHIT: intent -> done
    assignments  one row per collected assignment: worker, answers, gold verdict,
                 whether the vote counts, approve/reject
    bonuses      one row per SendBonus: intent -> paid
    workers      gold right / total per worker, blocked flag
    gold         the known-answer pairs (user-supplied or generated)
    ledger       every spend we committed to, in cents including MTurk's fee
    notices      worker notifications waiting for a batched NotifyWorkers
    meta         small key/value facts (the HIT type id)

**Idempotency.** Every spend follows *intent, call, record*: the row with its
UniqueRequestToken is written (and committed) before the endpoint is called, and the
result recorded after. A crash between the two leaves an ``intent`` row that
:mod:`match.crowd.service` reconciles against the endpoint on the next sync, so a retry
never makes a second HIT, bonus or extension.

This module knows SQL, not MTurk: it takes and returns plain dicts (``sqlite3.Row``
converted), and :class:`Conflict` for a live task name that is taken.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from match.errors import Conflict, StoreError

__all__ = ["CrowdState", "Row"]

Row = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    name TEXT NOT NULL,
    input TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    problem TEXT,
    pair_id TEXT NOT NULL,
    distance REAL,
    origin TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_live_name ON tasks (function, name) WHERE deleted = 0;
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
CREATE TABLE IF NOT EXISTS hits (
    hit_key TEXT PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    seq INTEGER NOT NULL,
    hit_id TEXT UNIQUE,
    token TEXT NOT NULL UNIQUE,
    gold_id TEXT NOT NULL,
    gold_pair_id TEXT NOT NULL,
    max_assignments INTEGER NOT NULL,
    reward_cents INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS hits_task ON hits (task_id);
CREATE TABLE IF NOT EXISTS extensions (
    token TEXT PRIMARY KEY,
    hit_key TEXT NOT NULL REFERENCES hits (hit_key),
    count INTEGER NOT NULL,
    target INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    assignment_id TEXT PRIMARY KEY,
    hit_key TEXT NOT NULL REFERENCES hits (hit_key),
    task_id INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    label TEXT,
    gold_label TEXT,
    gold_answer TEXT,
    gold_ok INTEGER NOT NULL,
    counted INTEGER NOT NULL,
    review TEXT,
    feedback TEXT,
    accepted_at REAL,
    submitted_at REAL,
    collected_at REAL NOT NULL,
    notified INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS assignments_task ON assignments (task_id);
CREATE INDEX IF NOT EXISTS assignments_worker ON assignments (worker_id);
CREATE TABLE IF NOT EXISTS bonuses (
    token TEXT PRIMARY KEY,
    assignment_id TEXT NOT NULL UNIQUE,
    worker_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    cents INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    gold_right INTEGER NOT NULL DEFAULT 0,
    gold_exact INTEGER NOT NULL DEFAULT 0,
    gold_total INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0,
    blocked_at REAL,
    block_sent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS gold (
    gold_id TEXT PRIMARY KEY,
    image1 TEXT NOT NULL,
    image2 TEXT NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL UNIQUE,
    task_id INTEGER,
    kind TEXT NOT NULL,
    cents INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL UNIQUE,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_JSON_COLUMNS = ("input", "result", "problem", "origin")


def _row(row: sqlite3.Row | None) -> Row | None:
    if row is None:
        return None
    data = dict(row)
    for column in _JSON_COLUMNS:
        if column in data and isinstance(data[column], str):
            data[column] = json.loads(data[column])
    return data


class CrowdState:
    """The SQLite crowd state of one data directory. Thread-safe (one connection, a lock)."""

    def __init__(self, data_dir: str | Path, *, clock: Any = time.time) -> None:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "crowd.sqlite3"
        self.clock = clock
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            # WAL + NORMAL survives a crash of the process (what idempotency needs); only a
            # power loss can lose the last commits, and the endpoint reconciles those too.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the crowd state at {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), committed on success."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return [r for r in (_row(x) for x in self._db.execute(sql, args).fetchall()) if r is not None]

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        with self._lock:
            return _row(self._db.execute(sql, args).fetchone())

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # --- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A stored fact, or None."""
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        """Store a fact."""
        self._exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- tasks ---------------------------------------------------------------------

    def create_task(
        self,
        function: str,
        name: str,
        input: Mapping[str, Any],
        *,
        state: str,
        pair_id: str,
        result: Mapping[str, Any] | None = None,
        distance: float | None = None,
        origin: Mapping[str, Any] | None = None,
    ) -> Row:
        """Insert a task; :class:`Conflict` if a live task of that name exists."""
        now = self.clock()
        try:
            with self.transaction() as db:
                cursor = db.execute(
                    "INSERT INTO tasks (function, name, input, state, result, pair_id, distance, origin, "
                    "created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        function,
                        name,
                        json.dumps(input),
                        state,
                        json.dumps(result) if result else None,
                        pair_id,
                        distance,
                        json.dumps(origin) if origin else None,
                        now,
                        now if state != "processing" else None,
                    ),
                )
                task_id = cursor.lastrowid
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"a task named {name!r} already exists for {function}") from exc
        task = self.task_by_id(int(task_id or 0))
        assert task is not None
        return task

    def task(self, function: str, name: str) -> Row | None:
        """The live task of that name, or None."""
        return self._one(
            "SELECT * FROM tasks WHERE function = ? AND name = ? AND deleted = 0", (function, name)
        )

    def task_by_id(self, task_id: int) -> Row | None:
        """Any task (live or deleted) by id."""
        return self._one("SELECT * FROM tasks WHERE id = ?", (task_id,))

    def tasks(
        self,
        *,
        function: str | None = None,
        state: str | None = None,
        deleted: bool = False,
        name_prefix: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        """Tasks, oldest first, filtered."""
        where: list[str] = ["deleted = ?"]
        args: list[Any] = [int(deleted)]
        if function:
            where.append("function = ?")
            args.append(function)
        if state:
            where.append("state = ?")
            args.append(state)
        if name_prefix:
            where.append("substr(name, 1, ?) = ?")
            args += [len(name_prefix), name_prefix]
        sql = f"SELECT * FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT ? OFFSET ?"
        return self._all(sql, [*args, limit, offset])

    def all_tasks(self) -> list[Row]:
        """Every task ever made, deleted ones included (the report's population)."""
        return self._all("SELECT * FROM tasks ORDER BY id")

    def finish_task(
        self,
        task_id: int,
        state: str,
        *,
        result: Mapping[str, Any] | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        """Move a processing task to completed or failed (no-op if it already finished)."""
        moved = self._exec(
            "UPDATE tasks SET state = ?, result = ?, problem = ?, finished_at = ? "
            "WHERE id = ? AND state = 'processing'",
            (
                state,
                json.dumps(result) if result is not None else None,
                json.dumps(problem) if problem is not None else None,
                self.clock(),
                task_id,
            ),
        )
        if moved == 1:
            from match import metrics

            metrics.crowd_task(state)

    def update_result(self, task_id: int, result: Mapping[str, Any]) -> None:
        """Replace a task's result (e.g. the running estimate of a processing task)."""
        self._exec("UPDATE tasks SET result = ? WHERE id = ?", (json.dumps(result), task_id))

    def delete_task(self, task_id: int) -> None:
        """Mark a finished task deleted: its name is free again, its history stays."""
        self._exec("UPDATE tasks SET deleted = 1 WHERE id = ?", (task_id,))

    def latest_verdict(self, pair_id: str) -> Row | None:
        """The newest completed task about this pair (deleted ones included), or None."""
        return self._one(
            "SELECT * FROM tasks WHERE pair_id = ? AND state = 'completed' "
            "AND function = 'image-similarity' ORDER BY id DESC LIMIT 1",
            (pair_id,),
        )

    # --- HITs ----------------------------------------------------------------------

    def add_hit(self, row: Mapping[str, Any]) -> None:
        """Record the intent to create a HIT (state ``intent``)."""
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._exec(f"INSERT OR IGNORE INTO hits ({columns}) VALUES ({marks})", list(row.values()))

    def update_hit(self, hit_key: str, **values: Any) -> None:
        """Set columns of a HIT."""
        sets = ", ".join(f"{column} = ?" for column in values)
        self._exec(f"UPDATE hits SET {sets} WHERE hit_key = ?", [*values.values(), hit_key])

    def hits(self, *, task_id: int | None = None, states: Sequence[str] | None = None) -> list[Row]:
        """HITs, by task and/or state, in creation order."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args += list(states)
        return self._all(f"SELECT * FROM hits WHERE {' AND '.join(where)} ORDER BY created_at, seq", args)

    def hit(self, hit_key: str) -> Row | None:
        """One HIT by our key."""
        return self._one("SELECT * FROM hits WHERE hit_key = ?", (hit_key,))

    # --- extensions ----------------------------------------------------------------

    def add_extension(self, token: str, hit_key: str, count: int, target: int) -> None:
        """Record the intent to add ``count`` assignments to a HIT (to ``target`` in all)."""
        self._exec(
            "INSERT OR IGNORE INTO extensions (token, hit_key, count, target, state, created_at) "
            "VALUES (?, ?, ?, ?, 'intent', ?)",
            (token, hit_key, count, target, self.clock()),
        )

    def extensions(self, *, state: str | None = None, hit_key: str | None = None) -> list[Row]:
        """Extensions, filtered."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if state:
            where.append("state = ?")
            args.append(state)
        if hit_key:
            where.append("hit_key = ?")
            args.append(hit_key)
        return self._all(f"SELECT * FROM extensions WHERE {' AND '.join(where)} ORDER BY created_at", args)

    def finish_extension(self, token: str) -> None:
        """Mark an extension done."""
        self._exec("UPDATE extensions SET state = 'done' WHERE token = ?", (token,))

    # --- assignments ---------------------------------------------------------------

    def add_assignment(self, row: Mapping[str, Any]) -> bool:
        """Record a collected assignment; False if it was already there."""
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        return (
            self._exec(f"INSERT OR IGNORE INTO assignments ({columns}) VALUES ({marks})", list(row.values()))
            == 1
        )

    def assignment(self, assignment_id: str) -> Row | None:
        """One assignment."""
        return self._one("SELECT * FROM assignments WHERE assignment_id = ?", (assignment_id,))

    def assignments(
        self,
        *,
        task_id: int | None = None,
        hit_key: str | None = None,
        review: str | None = None,
        unreviewed: bool = False,
    ) -> list[Row]:
        """Collected assignments, filtered, in collection order."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        if hit_key is not None:
            where.append("hit_key = ?")
            args.append(hit_key)
        if review is not None:
            where.append("review = ?")
            args.append(review)
        if unreviewed:
            where.append("review IS NULL")
        return self._all(
            f"SELECT * FROM assignments WHERE {' AND '.join(where)} ORDER BY collected_at, assignment_id",
            args,
        )

    def set_review(self, assignment_id: str, review: str, feedback: str) -> None:
        """Record that an assignment was approved or rejected."""
        self._exec(
            "UPDATE assignments SET review = ?, feedback = ? WHERE assignment_id = ?",
            (review, feedback, assignment_id),
        )

    def uncount_assignment(self, assignment_id: str) -> None:
        """Stop counting one vote (its assignment was rejected) while its task is processing."""
        self._exec(
            "UPDATE assignments SET counted = 0 WHERE assignment_id = ? AND task_id IN "
            "(SELECT id FROM tasks WHERE state = 'processing')",
            (assignment_id,),
        )

    def uncount_worker(self, worker_id: str) -> None:
        """Stop counting every vote of a (blocked) worker on tasks still processing."""
        self._exec(
            "UPDATE assignments SET counted = 0 WHERE worker_id = ? AND task_id IN "
            "(SELECT id FROM tasks WHERE state = 'processing')",
            (worker_id,),
        )

    # --- workers -------------------------------------------------------------------

    def record_gold(self, worker_id: str, right: bool, exact: bool = False) -> Row:
        """Count one gold answer of a worker (right on same-or-not; exactly the known
        label); returns the worker's row."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO workers (worker_id) VALUES (?)", (worker_id,))
            db.execute(
                "UPDATE workers SET gold_right = gold_right + ?, gold_exact = gold_exact + ?, "
                "gold_total = gold_total + 1 WHERE worker_id = ?",
                (int(right), int(exact), worker_id),
            )
        worker = self.worker(worker_id)
        assert worker is not None
        return worker

    def worker(self, worker_id: str) -> Row | None:
        """One worker's gold record."""
        return self._one("SELECT * FROM workers WHERE worker_id = ?", (worker_id,))

    def workers(self) -> list[Row]:
        """Every worker seen, by id."""
        return self._all("SELECT * FROM workers ORDER BY worker_id")

    def block_worker(self, worker_id: str) -> None:
        """Mark a worker blocked (the CreateWorkerBlock call is tracked by ``block_sent``)."""
        self._exec(
            "UPDATE workers SET blocked = 1, blocked_at = ? WHERE worker_id = ? AND blocked = 0",
            (self.clock(), worker_id),
        )

    def mark_block_sent(self, worker_id: str) -> None:
        """Record that CreateWorkerBlock succeeded."""
        self._exec("UPDATE workers SET block_sent = 1 WHERE worker_id = ?", (worker_id,))

    # --- gold ----------------------------------------------------------------------

    def add_gold(self, gold_id: str, image1: str, image2: str, label: str, source: str) -> bool:
        """Add a gold pair; False if one with this id exists."""
        return (
            self._exec(
                "INSERT OR IGNORE INTO gold (gold_id, image1, image2, label, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (gold_id, image1, image2, label, source, self.clock()),
            )
            == 1
        )

    def gold(self, gold_id: str | None = None) -> list[Row]:
        """All gold pairs (or the one with ``gold_id``), oldest first."""
        if gold_id is not None:
            return self._all("SELECT * FROM gold WHERE gold_id = ?", (gold_id,))
        return self._all("SELECT * FROM gold ORDER BY created_at, gold_id")

    # --- bonuses -------------------------------------------------------------------

    def add_bonus(self, token: str, assignment_id: str, worker_id: str, task_id: int, cents: int) -> None:
        """Record the intent to pay a bonus (state ``intent``); once per assignment."""
        self._exec(
            "INSERT OR IGNORE INTO bonuses (token, assignment_id, worker_id, task_id, cents, state, "
            "created_at) VALUES (?, ?, ?, ?, ?, 'intent', ?)",
            (token, assignment_id, worker_id, task_id, cents, self.clock()),
        )

    def bonuses(self, *, state: str | None = None) -> list[Row]:
        """Bonuses, filtered by state."""
        if state:
            return self._all("SELECT * FROM bonuses WHERE state = ? ORDER BY created_at", (state,))
        return self._all("SELECT * FROM bonuses ORDER BY created_at")

    def finish_bonus(self, token: str) -> None:
        """Mark a bonus paid."""
        self._exec("UPDATE bonuses SET state = 'paid' WHERE token = ?", (token,))

    # --- money ---------------------------------------------------------------------

    def spend(self, ref: str, kind: str, cents: int, task_id: int | None) -> bool:
        """Record a committed spend once per ``ref``; False if already recorded.

        Each entry also reaches the Prometheus counters (match.metrics) exactly once.
        """
        recorded = (
            self._exec(
                "INSERT OR IGNORE INTO ledger (ref, task_id, kind, cents, at) VALUES (?, ?, ?, ?, ?)",
                (ref, task_id, kind, cents, self.clock()),
            )
            == 1
        )
        if recorded and cents:
            from match import metrics

            metrics.crowd_spend(Decimal(cents) / 100)
        return recorded

    def spent(self, task_id: int | None = None) -> int:
        """Cents committed in all (or for one task)."""
        if task_id is None:
            row = self._one("SELECT COALESCE(SUM(cents), 0) AS total FROM ledger")
        else:
            row = self._one(
                "SELECT COALESCE(SUM(cents), 0) AS total FROM ledger WHERE task_id = ?", (task_id,)
            )
        return int(row["total"]) if row else 0

    def ledger(self) -> list[Row]:
        """Every ledger row, oldest first."""
        return self._all("SELECT * FROM ledger ORDER BY id")

    # --- notices -------------------------------------------------------------------

    def add_notice(self, worker_id: str, kind: str, ref: str) -> None:
        """Queue a notification for the next batched NotifyWorkers (once per ``ref``)."""
        self._exec(
            "INSERT OR IGNORE INTO notices (worker_id, kind, ref) VALUES (?, ?, ?)", (worker_id, kind, ref)
        )

    def pending_notices(self) -> list[Row]:
        """Notifications not yet sent."""
        return self._all("SELECT * FROM notices WHERE sent = 0 ORDER BY id")

    def mark_notices_sent(self, ids: Sequence[int]) -> None:
        """Mark notifications sent."""
        with self.transaction() as db:
            db.executemany("UPDATE notices SET sent = 1 WHERE id = ?", [(i,) for i in ids])
