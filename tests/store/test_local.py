"""What only the embedded store promises: several processes, crashes, fork, SQLite.

The contract suite (test_contract.py) already runs on the local store; these tests add
what gunicorn's worker processes rely on. Processes are started with ``spawn`` (a clean
interpreter, like separate workers) except in the fork test, which forks on purpose.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from match import signature as sig
from match.errors import StoreError, StoreUnavailable
from match.store import Record, open_store
from match.store.base import best_matches
from match.store.local import DATABASE_NAME, SCHEMA_VERSION, LocalStore, _Matrix
from tests.store.test_contract import paths, random_signature, variant

SPAWN = multiprocessing.get_context("spawn")


def open_local(data_dir: Path, **kwargs: Any) -> LocalStore:
    if kwargs:
        data_dir.mkdir(parents=True, exist_ok=True)
        return LocalStore(data_dir / DATABASE_NAME, **kwargs)
    return LocalStore.from_config({"MATCH_DATA_DIR": str(data_dir)})


def run_elsewhere(target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a fresh process and wait for it to succeed."""
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(120)
    assert process.exitcode == 0, f"{target.__name__} exited with {process.exitcode}"


# --- what the child processes do (module level, so spawn can import them) ----------


def _upsert(data_dir: str, filepath: str, seed: int) -> None:
    with LocalStore.from_config({"MATCH_DATA_DIR": data_dir}) as store:
        store.upsert(Record(filepath, random_signature(seed), {"seed": seed}))


def _delete(data_dir: str, filepath: str) -> None:
    with LocalStore.from_config({"MATCH_DATA_DIR": data_dir}) as store:
        assert store.delete(filepath)


def _add_contested(data_dir: str, worker: int, barrier: Any) -> None:
    with LocalStore.from_config({"MATCH_DATA_DIR": data_dir}) as store:
        barrier.wait(60)
        store.upsert(Record("contested.jpg", random_signature(worker), {"worker": worker}))


def _bulk_until_killed(data_dir: str, count: int, written: Any, stalled: Any) -> None:
    """Start a bulk upsert and stall inside its transaction, to be SIGKILLed there."""
    store = LocalStore.from_config({"MATCH_DATA_DIR": data_dir})
    connection = store._connection()
    calls = 0

    def stall_midway() -> int:
        nonlocal calls
        calls += 1
        if calls == 200:
            written.value = connection.total_changes  # rows written so far, uncommitted
            stalled.set()
            time.sleep(120)
        return 0

    connection.set_progress_handler(stall_midway, 1000)
    store.upsert_many(Record(f"bulk/{i:05d}.jpg", random_signature(i)) for i in range(count))


def _forked_child(store: LocalStore) -> None:
    """In a forked child: use the parent's store object as a gunicorn worker would."""
    assert paths(store.search(random_signature(1))) == ["parent.jpg"]
    store.upsert(Record("child.jpg", random_signature(2)))
    assert paths(store.search(random_signature(2))) == ["child.jpg"]
    assert store.count() == 2


# --- several processes ----------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_adds_of_one_filepath_leave_one_record(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    barrier = SPAWN.Barrier(16)
    workers = [SPAWN.Process(target=_add_contested, args=(str(tmp_path), worker, barrier))
               for worker in range(16)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [process.exitcode for process in workers] == [0] * 16

    assert store.count() == 1
    assert store.list() == ["contested.jpg"]
    record = store.get("contested.jpg")
    assert record is not None
    worker = record.metadata["worker"]
    assert worker in range(16)
    assert np.array_equal(record.signature, random_signature(worker))  # one writer's whole record
    [hit] = store.search(random_signature(worker))
    assert hit.filepath == "contested.jpg" and hit.distance == pytest.approx(0.0, abs=1e-9)


def test_writes_in_another_process_are_seen_by_the_next_search(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    store.upsert(Record("seed.jpg", random_signature(1)))
    assert paths(store.search(random_signature(1))) == ["seed.jpg"]  # the cache is loaded

    run_elsewhere(_upsert, str(tmp_path), "other.jpg", 2)
    [hit] = store.search(random_signature(2))
    assert (hit.filepath, hit.metadata) == ("other.jpg", {"seed": 2})

    run_elsewhere(_upsert, str(tmp_path), "other.jpg", 3)  # overwritten elsewhere
    assert store.search(random_signature(2)) == []
    assert paths(store.search(random_signature(3))) == ["other.jpg"]

    run_elsewhere(_delete, str(tmp_path), "other.jpg")  # deleted elsewhere
    assert store.search(random_signature(3)) == []
    assert paths(store.search(random_signature(1))) == ["seed.jpg"]

    run_elsewhere(_upsert, str(tmp_path), "other.jpg", 4)  # and added back
    assert paths(store.search(random_signature(4))) == ["other.jpg"]


def test_a_single_add_elsewhere_reads_one_row_not_everything(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_local(tmp_path)
    store.upsert_many(Record(f"{i}.jpg", random_signature(i)) for i in range(500))
    assert len(store.search(random_signature(1))) == 1  # loads all 500
    matrix = store._state.matrix

    loaded: list[int] = []
    original = _Matrix.put

    def counting_put(self: _Matrix, filepaths: Any, signatures: np.ndarray) -> None:
        loaded.append(len(filepaths))
        original(self, filepaths, signatures)

    monkeypatch.setattr(_Matrix, "put", counting_put)
    run_elsewhere(_upsert, str(tmp_path), "new.jpg", 1000)
    assert paths(store.search(random_signature(1000))) == ["new.jpg"]
    assert loaded == [1]
    assert store._state.matrix is matrix and matrix.size == 501
    assert paths(store.search(random_signature(1))) == ["1.jpg"]
    assert loaded == [1]  # nothing changed, nothing read


def test_a_writer_killed_mid_batch_leaves_none_of_it(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    store.upsert_many(Record(f"before/{i}.jpg", random_signature(i)) for i in range(5))
    assert store.count() == 5 and len(store.search(random_signature(0))) == 1

    written, stalled = SPAWN.Value("q", 0), SPAWN.Event()
    process = SPAWN.Process(target=_bulk_until_killed, args=(str(tmp_path), 20_000, written, stalled))
    process.start()
    assert stalled.wait(120), "the writer never reached the middle of its batch"
    assert 100 < written.value < 20_000  # really in the middle of the transaction
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    process.join(30)
    assert process.exitcode == -signal.SIGKILL

    for reader in (store, open_local(tmp_path)):
        assert reader.count() == 5
        assert reader.list(0, 100) == [f"before/{i}.jpg" for i in range(5)]
        assert reader.search(random_signature(10)) == []  # bulk/00010.jpg never happened
        assert paths(reader.search(random_signature(3))) == ["before/3.jpg"]
    # The dead writer's lock is gone: the next write goes through at once.
    store.upsert(Record("after.jpg", random_signature(99)))
    assert store.count() == 6
    with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_forked_child_uses_its_own_connection_and_cache(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    store.upsert(Record("parent.jpg", random_signature(1)))
    assert paths(store.search(random_signature(1))) == ["parent.jpg"]  # connection and cache in use

    process = multiprocessing.get_context("fork").Process(target=_forked_child, args=(store,))
    process.start()
    process.join(60)
    assert process.exitcode == 0

    # The parent's connection and cache still work, and see the child's add.
    assert paths(store.search(random_signature(2))) == ["child.jpg"]
    assert store.count() == 2


# --- one process ----------------------------------------------------------------------


def test_restart_keeps_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"  # created, parents too
    with open_local(data_dir) as store:
        store.upsert_many(Record(f"{i:03d}.jpg", random_signature(i), {"i": i}, sha256=f"{i:064x}")
                          for i in range(100))
        for i in range(0, 100, 10):
            store.delete(f"{i:03d}.jpg")
        before = [store.get(name) for name in store.list(0, 100)]
    assert (data_dir / DATABASE_NAME).is_file()

    with open_store({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(data_dir)}) as store:
        assert store.count() == 90
        after = [store.get(name) for name in store.list(0, 100)]
        assert [(r.filepath, r.metadata, r.sha256, r.added_at) for r in after if r] == \
               [(r.filepath, r.metadata, r.sha256, r.added_at) for r in before if r]
        assert paths(store.search(random_signature(42))) == ["042.jpg"]
        assert store.search(random_signature(40)) == []


def test_sqlite_settings(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    assert len(store._state.connections) == 0  # a store just built holds no connection
    connection = store._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (10_000,)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_local(tmp_path).close()
    with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this match understands"):
        open_local(tmp_path)


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / DATABASE_NAME).write_bytes(b"this is not SQLite" * 1000)
    with pytest.raises(StoreError, match="not a database"):
        open_local(tmp_path)


def test_a_locked_database_is_unavailable(tmp_path: Path) -> None:
    store = open_local(tmp_path, timeout=0.2)
    store.upsert(Record("a.jpg", random_signature(1)))
    store.check()

    blocker = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.check()
        with pytest.raises(StoreUnavailable, match="locked"):
            store.upsert(Record("b.jpg", random_signature(2)))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.check()
    store.upsert(Record("b.jpg", random_signature(2)))
    assert store.count() == 2


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with pytest.raises(StoreUnavailable):
        store.check()


def test_threads_share_the_store(tmp_path: Path) -> None:
    store = open_local(tmp_path)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(20):
                seed = thread * 100 + i
                store.upsert(Record(f"t{thread}/{i}.jpg", random_signature(seed)))
                assert paths(store.search(random_signature(seed), size=1)) == [f"t{thread}/{i}.jpg"]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 160
    # Each finished thread's connection was closed with it; only this thread's is left.
    gc.collect()
    assert len(store._state.connections) == 1


def test_the_cache_follows_a_random_mix_of_writes(tmp_path: Path) -> None:
    # Two instances share nothing in memory, as two processes would: `reader` only
    # searches, `writer` adds, overwrites and deletes; after each round the reader's
    # cache must hold exactly the database's rows.
    reader, writer = open_local(tmp_path), open_local(tmp_path)
    rng = np.random.default_rng(3)
    for round_ in range(30):
        names = [f"{i}.jpg" for i in rng.choice(60, int(rng.integers(1, 25)), replace=False)]
        if round_ % 3 == 2:
            for name in names:
                writer.delete(name)
        else:
            writer.upsert_many(Record(name, random_signature(int(rng.integers(10**6)))) for name in names)
        reader.search(random_signature(0))
        matrix = reader._state.matrix
        stored = {name: writer.get(name) for name in writer.list(0, 1000)}
        assert sorted(matrix.paths) == sorted(stored)
        for name, record in stored.items():
            assert record is not None
            slot = matrix.slots[name]
            assert np.array_equal(matrix.signatures(np.array([slot]))[0], record.signature)
            assert matrix.norms[slot] == pytest.approx(float(np.linalg.norm(record.signature)))


@pytest.mark.parametrize("cutoff", [0.0, 0.1, 0.3, 0.45, 0.6, 1.0])
def test_the_scan_agrees_with_brute_force(tmp_path: Path, cutoff: float) -> None:
    # The float32 pass may only admit extra candidates, never lose one: every answer
    # must equal best_matches over signature.distances of every record.
    base = random_signature(1)
    signatures = [variant(base, changes, seed=changes) for changes in range(0, 400, 2)]
    signatures += [random_signature(1000 + i) for i in range(100)]
    signatures.append(np.zeros(648, dtype=np.int8))
    names = [f"{i:03d}.jpg" for i in range(len(signatures))]
    store = open_local(tmp_path)
    store.upsert_many(Record(name, signature) for name, signature in zip(names, signatures, strict=True))
    queries = np.stack([base, variant(base, 50, seed=9), random_signature(5), np.zeros(648, dtype=np.int8)])

    nearest = sig.distances(queries, np.stack(signatures)).min(axis=0)
    expected = best_matches(names, nearest, [{}] * len(names), 1000, cutoff)
    got = store.search(queries, size=1000, cutoff=cutoff)
    assert [(hit.filepath, hit.distance) for hit in got] == [(hit.filepath, hit.distance) for hit in expected]


# The schema of the release before local features (user_version 1), as it wrote it.
_SCHEMA_V1 = """
CREATE TABLE images (filepath TEXT PRIMARY KEY, signature BLOB NOT NULL, metadata TEXT NOT NULL,
                     sha256 TEXT, added_at REAL NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX images_seq ON images (seq);
CREATE TABLE deletions (filepath TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX deletions_seq ON deletions (seq);
CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 0), generation INTEGER NOT NULL);
INSERT INTO state (id, generation) VALUES (0, 1);
PRAGMA user_version = 1;
"""


def test_a_store_from_before_local_features_is_upgraded_in_place(tmp_path: Path) -> None:
    from tests.store.test_contract import random_features, with_features

    path = tmp_path / DATABASE_NAME
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA_V1)
    old.execute("INSERT INTO images VALUES ('old.jpg', ?, '{\"k\": 1}', NULL, 1.0, 1)",
                (random_signature(1).tobytes(),))
    old.commit()
    old.close()
    store = LocalStore(path)
    try:
        record = store.get("old.jpg")
        assert record is not None and record.features is None and dict(record.metadata) == {"k": 1}
        assert paths(store.search(random_signature(1))) == ["old.jpg"]
        assert store.missing_features() == 1
        store.upsert(with_features("new.jpg", 2, random_features(2)))
        assert store.search_words(with_features("new.jpg", 2, random_features(2)).words,
                                  size=1)[0].filepath == "new.jpg"
        store.upsert(with_features("old.jpg", 1, random_features(3)))  # what `match reindex` does
        assert store.missing_features() == 0
    finally:
        store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    check.close()
