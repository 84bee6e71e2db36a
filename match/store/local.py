"""The embedded default store: SQLite on disk, an exact scan in memory.

Nothing to install and nothing to run: one SQLite file, ``<MATCH_DATA_DIR>/match.sqlite3``,
is the truth, and each process keeps a float32 copy of every signature to scan.

On disk
    One row per image in ``images`` (``filepath`` primary key, the 648-byte int8
    ``signature``, JSON ``metadata``, ``sha256``, ``added_at``) plus ``seq``, the
    generation that last wrote the row. ``state`` holds the one ``generation`` counter;
    ``deletions`` holds a tombstone (filepath, seq) per deleted filepath. The schema
    version lives in ``PRAGMA user_version``; a newer file than this code knows is
    refused with :class:`~match.errors.StoreError` rather than misread.

Writing
    Every write is one ``BEGIN IMMEDIATE`` transaction that bumps ``generation`` and
    stamps the rows it touches with the new value: an upsert is ``INSERT ... ON
    CONFLICT(filepath) DO UPDATE`` (so 16 processes adding one filepath leave one row),
    a delete removes the row and records a tombstone. ``upsert_many`` writes its whole
    batch in one transaction, so a process killed half way leaves none of it.
    The journal is WAL with ``synchronous=FULL``: the WAL is fsynced at every commit,
    so an add the API has acknowledged survives a power cut, not only a crashed
    process (``NORMAL`` would only promise the latter). The fsync costs a few
    milliseconds per commit, which is small next to decoding and signing an image, and
    bulk loads pay it once per batch.

Searching
    Each process keeps every signature as a column of a float32 ``(648, n)`` matrix,
    with squared norms. Because ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, one BLAS matmul
    of the ``(k, 648)`` queries (k = 8 orientations) against it gives every distance;
    signature values are small integers, so the products are exact in float32. Images
    within the cutoff (plus a hair of slack) are reranked with
    :func:`match.signature.distances`, the one distance every backend uses, and deduped
    by :func:`match.store.base.best_matches`. Metadata is read from SQLite for the final
    hits only, so it costs no memory per image.

Several processes (gunicorn workers)
    Before each search, a process reads ``generation`` (one tiny query) inside the
    read transaction the search uses. If another process has written since, it reads
    only the rows with ``seq`` above its cached generation and the tombstones above it,
    so an add elsewhere costs one indexed query here, never a reload. A generation
    *lower* than the cached one means the file was replaced (a restored backup): the
    cache is rebuilt from scratch.

Threads and fork
    SQLite connections are opened lazily, one per thread, and belong to the process
    that opened them; building the store leaves none open. SQLite must not carry a
    connection across ``fork``: when :func:`os.getpid` changes (a store used, then
    forked) the child starts afresh with new connections, a new lock and an empty
    cache, and never touches, nor closes, what it inherited. (match's app goes further
    and opens one store per process, see :func:`match.app.get_store`.) Searches in one
    process take turns on a lock; the scan itself is multithreaded BLAS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from match import features, vocabulary
from match import signature as sig
from match.errors import StoreError, StoreUnavailable
from match.store.base import Match, Record, SignatureStore, WordHit, best_matches

__all__ = ["LocalStore", "SCHEMA_VERSION", "DATABASE_NAME"]

#: ``PRAGMA user_version`` of the files this code writes. Version 1 files (before
#: local features) are upgraded in place on open: two columns are added.
SCHEMA_VERSION = 2

#: File name of the database inside ``MATCH_DATA_DIR``.
DATABASE_NAME = "match.sqlite3"

_SCHEMA = """
CREATE TABLE images (
    filepath  TEXT PRIMARY KEY,
    signature BLOB NOT NULL,      -- 648 bytes, int8
    metadata  TEXT NOT NULL,      -- a JSON object
    sha256    TEXT,
    added_at  REAL NOT NULL,      -- seconds since the epoch
    seq       INTEGER NOT NULL,   -- the generation that last wrote this row
    features  BLOB,               -- match.features.encode(), or NULL: not computed
    words     BLOB                -- its distinct visual words, uint16 little-endian
);
CREATE INDEX images_seq ON images (seq);
CREATE TABLE deletions (
    filepath  TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL    -- the generation that deleted it
);
CREATE INDEX deletions_seq ON deletions (seq);
CREATE TABLE state (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    generation INTEGER NOT NULL   -- bumped by every write transaction
);
INSERT INTO state (id, generation) VALUES (0, 0);
"""

_UPGRADE_1_TO_2 = ("ALTER TABLE images ADD COLUMN features BLOB",
                   "ALTER TABLE images ADD COLUMN words BLOB")

_UPSERT = """
INSERT INTO images (filepath, signature, metadata, sha256, added_at, seq, features, words)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (filepath) DO UPDATE SET
    signature = excluded.signature, metadata = excluded.metadata, sha256 = excluded.sha256,
    added_at = excluded.added_at, seq = excluded.seq, features = excluded.features,
    words = excluded.words
"""

# Filepaths bound per ``IN (...)`` query: below SQLite's oldest variable limit (999).
_CHUNK = 500

# Rows read per slice when (re)loading the cache.
_LOAD_SLICE = 20_000

# Connections a forked child inherited from its parent. SQLite must not use (or close)
# a connection across fork, and dropping the last reference would close it, so they
# are kept here, untouched, for the life of the child.
_INHERITED: list[object] = []


@contextmanager
def _translated() -> Iterator[None]:
    """Turn sqlite3 errors into match errors: lock, I/O and read-only ones mean 503."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"the local store is unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"the local store failed: {exc}") from exc


class _Matrix:
    """Every signature of the store as float32 columns, for the matmul scan.

    Columns ``[0, size)`` of ``columns`` (shape ``(648, capacity)``) are live, with
    their squared norms (``squares``, float32, exact) and norms (``norms``, float64, as
    :func:`match.signature.norms` gives them); ``paths[i]`` names column ``i`` and
    ``slots`` maps back. A removed column is replaced by the last one, so the live
    columns stay contiguous. ``generation`` is the store generation they reflect.

    Signatures are stored as columns because BLAS runs ``(k, 648) @ (648, n)`` faster
    than ``(n, 648) @ (648, k)`` for the k = 8 orientations (measured: about 30% less
    CPU at 100k records).
    """

    def __init__(self) -> None:
        self.columns = np.zeros((sig.SIGNATURE_LENGTH, 0), dtype=np.float32)
        self.squares = np.zeros(0, dtype=np.float32)
        self.norms = np.zeros(0, dtype=np.float64)
        self.paths: list[str] = []
        self.slots: dict[str, int] = {}
        self.generation = 0

    @property
    def size(self) -> int:
        """Number of live columns."""
        return len(self.paths)

    def put(self, paths: Sequence[str], signatures: np.ndarray) -> None:
        """Insert or replace signatures; ``signatures`` is int8 ``(len(paths), 648)``."""
        live = self.size
        targets = np.empty(len(paths), dtype=np.intp)
        for i, path in enumerate(paths):
            slot = self.slots.get(path)
            if slot is None:
                slot = self.slots[path] = len(self.paths)
                self.paths.append(path)
            targets[i] = slot
        self.reserve(self.size, live=live)
        rows = signatures.astype(np.float32)
        # All new: they take columns live..size in order, a slice (no fancy indexing).
        where: slice | np.ndarray = slice(live, self.size) if self.size - live == len(paths) else targets
        self.columns[:, where] = rows.T
        self.squares[where] = np.einsum("ij,ij->i", rows, rows)
        self.norms[where] = sig.norms(rows)

    def remove(self, path: str) -> None:
        """Drop the column of ``path`` if there is one (the last column moves into its slot)."""
        slot = self.slots.pop(path, None)
        if slot is None:
            return
        last = len(self.paths) - 1
        if slot != last:
            moved = self.paths[last]
            self.paths[slot] = moved
            self.slots[moved] = slot
            self.columns[:, slot] = self.columns[:, last]
            self.squares[slot] = self.squares[last]
            self.norms[slot] = self.norms[last]
        self.paths.pop()

    def reserve(self, size: int, live: int | None = None) -> None:
        """Make room for ``size`` columns, keeping the first ``live`` (default: all live ones)."""
        capacity = self.columns.shape[1]
        if size <= capacity:
            return
        # Grow by half again so a stream of single adds copies the matrix rarely.
        # Columns past the live ones are never read, so they need no zeroing.
        capacity = max(size, capacity + capacity // 2, 1024)
        columns = np.empty((sig.SIGNATURE_LENGTH, capacity), dtype=np.float32)
        squares = np.empty(capacity, dtype=np.float32)
        norms = np.empty(capacity, dtype=np.float64)
        keep = self.size if live is None else live
        columns[:, :keep] = self.columns[:, :keep]
        squares[:keep] = self.squares[:keep]
        norms[:keep] = self.norms[:keep]
        self.columns, self.squares, self.norms = columns, squares, norms

    def signatures(self, slots: np.ndarray) -> np.ndarray:
        """The signatures in these columns, as float32 ``(len(slots), 648)`` rows."""
        rows: np.ndarray = self.columns[:, slots].T
        return rows

    def scan(self, queries: np.ndarray, cutoff: float,
             limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Columns within ``cutoff`` of any query, and each one's smallest distance.

        ``queries`` is int8 ``(k, 648)``. A float32 pass over every column keeps those
        that may be within the cutoff; :func:`match.signature.distances` then decides,
        so the result is exactly the one distance's.
        """
        n = self.size
        q = queries.astype(np.float32)
        q_squares = np.einsum("ij,ij->i", q, q)
        squares = self.squares[:n]
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, all small integers: exact in float32.
        distances2 = q_squares[:, np.newaxis] + squares[np.newaxis, :] - 2.0 * (q @ self.columns[:, :n])
        # distance <= cutoff  <=>  |a - b|^2 <= (cutoff * (|a| + |b|))^2. The slack
        # only admits borderline columns (rounding); the exact rerank decides.
        bounds = cutoff * (np.sqrt(q_squares)[:, np.newaxis] + np.sqrt(squares)[np.newaxis, :])
        near = distances2 <= bounds * bounds * np.float32(1.0 + 1e-5) + np.float32(1e-3)
        slots = np.flatnonzero(near.any(axis=0))
        if slots.size == 0:
            return slots, np.zeros(0)
        if limit is not None and slots.size > 4 * limit:
            # A wide cutoff (search verifies the nearest signatures whatever their
            # distance) would rerank every column exactly. The float32 distance equals
            # the exact one to ~1e-6, so the exact `limit` nearest are among its 4x
            # `limit` nearest: rerank only those.
            approx = (np.sqrt(np.maximum(distances2[:, slots], 0))
                      / (np.sqrt(q_squares)[:, np.newaxis] + np.sqrt(squares[slots])[np.newaxis, :]
                         + np.float32(1e-9))).min(axis=0)
            slots = np.sort(slots[np.argpartition(approx, 4 * limit - 1)[:4 * limit]])
        exact = sig.distances(queries, self.signatures(slots), self.norms[slots]).min(axis=0)
        within = exact <= cutoff
        return slots[within], exact[within]


class _WordIndex:
    """Inverted lists of visual words -> images, in memory, for :meth:`LocalStore.search_words`.

    The durable truth is each row's ``words`` column; every process builds the inverted
    lists from it, as it builds the signature matrix. (A SQLite table of postings
    would answer a 2,000-term disjunction over millions of postings in about a second;
    numpy answers in milliseconds.) Each stored version of an image gets a new
    ``entry``; a replaced or deleted one is marked dead. The lists are two CSRs
    (``postings`` sorted by word, ``offsets`` per word): one of every entry as of the
    last rebuild, one of the entries added since (rebuilt when they change, which is
    cheap while they are few); everything is folded into the first once the recent
    and dead entries are more than a tenth of the live ones.

    Scoring is tf-idf without the tf (an image lists each word once): an image scores
    the sum of ``log(1 + (N - df + 0.5) / (df + 0.5))`` over the query words it has,
    ``N`` live images and ``df`` those having the word: BM25's idf, as Elasticsearch
    scores the same words, always positive (Philbin et al. 2007, section 3).
    """

    def __init__(self) -> None:
        self.paths: list[str | None] = []  # entry -> filepath (None: dead)
        self.entry_words: list[np.ndarray | None] = []
        self.entries: dict[str, int] = {}  # filepath -> live entry
        self.dead: set[int] = set()
        self.df = np.zeros(vocabulary.WORDS, dtype=np.int32)
        self.main = _csr([], [])
        self.recent: list[int] = []
        self._recent_csr: tuple[np.ndarray, np.ndarray] | None = None

    def put(self, path: str, words: np.ndarray | None) -> None:
        """Index (or re-index) ``path`` with its distinct words; None: it has none."""
        self.remove(path)
        if words is None or words.size == 0:
            return
        entry = len(self.paths)
        self.paths.append(path)
        self.entry_words.append(words.astype(np.int32))
        self.entries[path] = entry
        self.df[words] += 1
        self.recent.append(entry)
        self._recent_csr = None

    def remove(self, path: str) -> None:
        """Forget ``path`` (its postings stay until the next rebuild, marked dead)."""
        entry = self.entries.pop(path, None)
        if entry is None:
            return
        words = self.entry_words[entry]
        if words is not None:
            self.df[words] -= 1
        self.paths[entry] = None
        self.entry_words[entry] = None
        self.dead.add(entry)

    def _rebuild(self) -> None:
        """Fold every live entry into the main CSR, renumbering entries densely."""
        live = [(path, words) for path, words in zip(self.paths, self.entry_words, strict=True)
                if path is not None and words is not None]
        self.paths = [path for path, _ in live]
        self.entry_words = [words for _, words in live]
        self.entries = {path: entry for entry, (path, _) in enumerate(live)}
        self.main = _csr(list(range(len(live))), self.entry_words)
        self.dead = set()
        self.recent = []
        self._recent_csr = None

    def search(self, words: np.ndarray, size: int) -> list[tuple[str, float]]:
        """(filepath, score) of the ``size`` best images sharing a word with ``words``."""
        live = len(self.entries)
        if live == 0:
            return []
        if len(self.recent) + len(self.dead) > max(64, live // 10):
            self._rebuild()
        if self._recent_csr is None:
            self._recent_csr = _csr(self.recent, [self.entry_words[entry] for entry in self.recent])
        df = self.df[words].astype(np.float64)
        idf = np.log1p((live - df + 0.5) / (df + 0.5))
        scores = np.zeros(len(self.paths), dtype=np.float64)
        for postings, offsets in (self.main, self._recent_csr):
            starts, ends = offsets[words], offsets[words + 1]
            lengths = ends - starts
            total = int(lengths.sum())
            if total:
                # Every posting of every query word in one gather: position i of the
                # concatenation is starts[k] + (i - where list k begins).
                begin = np.cumsum(lengths) - lengths
                positions = np.arange(total) + np.repeat(starts - begin, lengths)
                scores += np.bincount(postings[positions], weights=np.repeat(idf, lengths),
                                      minlength=len(self.paths))
        if self.dead:
            scores[list(self.dead)] = 0.0
        found = np.flatnonzero(scores > 0)
        if found.size > size:
            found = found[np.argpartition(-scores[found], size - 1)[:size]]
        ranked = sorted(((str(self.paths[entry]), float(scores[entry])) for entry in found.tolist()),
                        key=lambda hit: (-hit[1], hit[0]))
        return ranked


def _csr(entries: Sequence[int], words: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Inverted lists of ``entries`` (with their ``words``): postings sorted by word, offsets."""
    offsets = np.zeros(vocabulary.WORDS + 1, dtype=np.int64)
    pairs = [(entry, entry_words) for entry, entry_words in zip(entries, words, strict=True)
             if entry_words is not None]
    if not pairs:
        return np.zeros(0, dtype=np.int32), offsets
    flat = np.concatenate([entry_words for _, entry_words in pairs])
    owners = np.repeat(np.array([entry for entry, _ in pairs], dtype=np.int32),
                       [len(entry_words) for _, entry_words in pairs])
    order = np.argsort(flat, kind="stable")
    np.cumsum(np.bincount(flat, minlength=vocabulary.WORDS), out=offsets[1:])
    postings: np.ndarray = owners[order]
    return postings, offsets


class _Connection(sqlite3.Connection):
    """A plain connection that can be weakly referenced.

    :class:`LocalStore` tracks its threads' connections in a ``WeakSet``, so the one
    of a finished thread is closed as soon as the thread's ``threading.local`` lets go
    (a thread-per-request server would otherwise leak a file handle per request).
    """


@dataclasses.dataclass
class _ProcessState:
    """What belongs to one process: its connections, its cache and the lock on it."""

    pid: int
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    matrix: _Matrix = dataclasses.field(default_factory=_Matrix)
    words: _WordIndex = dataclasses.field(default_factory=lambda: _WordIndex())
    local: threading.local = dataclasses.field(default_factory=threading.local)
    connections: weakref.WeakSet[_Connection] = dataclasses.field(default_factory=weakref.WeakSet)


class LocalStore(SignatureStore):
    """The embedded store: a SQLite file under ``MATCH_DATA_DIR``, scanned in memory.

    >>> store = LocalStore.from_config({"MATCH_DATA_DIR": "./match-data"})  # doctest: +SKIP
    >>> store.upsert(Record("cat.jpg", signature, {"id": 7}))              # doctest: +SKIP
    >>> store.search(match.signature.generate_all(grey))                   # doctest: +SKIP
    [Match(filepath='cat.jpg', distance=0.0, metadata={'id': 7})]

    ``timeout`` is how many seconds a write waits for another writer's lock (SQLite's
    busy timeout) before giving up with :class:`~match.errors.StoreUnavailable`.
    """

    name = "local"

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._state = _ProcessState(os.getpid())
        self._closed = False
        with _translated():
            # Its own connection, closed at once: a store just built holds no connection,
            # so a process that builds it and then forks (gunicorn) hands none down.
            connection = self._open()
            try:
                self._initialize(connection)
            finally:
                connection.close()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalStore:
        """Open (creating if needed) ``<MATCH_DATA_DIR>/match.sqlite3``."""
        data_dir = Path(config["MATCH_DATA_DIR"])
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create MATCH_DATA_DIR {str(data_dir)!r}: {exc}") from exc
        return cls(data_dir / DATABASE_NAME)

    # --- connections -----------------------------------------------------------------

    def _process(self) -> _ProcessState:
        """This process's state; a forked child leaves its parent's behind, unused."""
        state = self._state
        if state.pid != os.getpid():
            _INHERITED.append(state)
            state = self._state = _ProcessState(os.getpid())
        return state

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreError("the local store is closed")
        state = self._process()
        connection: _Connection | None = getattr(state.local, "connection", None)
        if connection is None:
            connection = state.local.connection = self._open()
            with state.lock:
                state.connections.add(connection)
        return connection

    def _open(self) -> _Connection:
        """A new connection in WAL mode with ``synchronous=FULL`` (see the module docstring)."""
        # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
        # check_same_thread=False only so close() can close every thread's connection.
        connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                     check_same_thread=False, factory=_Connection)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    @staticmethod
    @contextmanager
    def _transaction(connection: sqlite3.Connection, mode: str = "") -> Iterator[None]:
        """``BEGIN [IMMEDIATE]`` ... ``COMMIT``, rolled back on any error."""
        connection.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            if connection.in_transaction:  # SQLite rolls back by itself after some errors
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _initialize(self, connection: sqlite3.Connection) -> None:
        """Create the schema in a new file; refuse a file from a newer match."""
        with self._transaction(connection, "IMMEDIATE"):
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this match "
                                 f"understands ({SCHEMA_VERSION}); upgrade match to open it")
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 1:
                # A store of the release before local features: its records keep working
                # (searched by signature) until `match reindex` gives them features.
                for statement in _UPGRADE_1_TO_2:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _next_generation(connection: sqlite3.Connection) -> int:
        """Bump the generation counter (inside a write transaction) and return it."""
        connection.execute("UPDATE state SET generation = generation + 1 WHERE id = 0")
        generation: int = connection.execute("SELECT generation FROM state WHERE id = 0").fetchone()[0]
        return generation

    # --- the SignatureStore methods --------------------------------------------------

    def _upsert_many(self, records: Sequence[Record]) -> None:
        now = time.time()
        with _translated():
            connection = self._connection()
            with self._transaction(connection, "IMMEDIATE"):
                generation = self._next_generation(connection)
                connection.executemany(_UPSERT, (
                    (record.filepath, record.signature.tobytes(),
                     json.dumps(record.metadata, ensure_ascii=False, allow_nan=False),
                     record.sha256, now if record.added_at is None else record.added_at, generation,
                     None if record.features is None else features.encode(record.features),
                     None if record.features is None else record.words.astype("<u2").tobytes())
                    for record in records))
                connection.executemany("DELETE FROM deletions WHERE filepath = ?",
                                       ((record.filepath,) for record in records))

    def _delete(self, filepath: str) -> bool:
        with _translated():
            connection = self._connection()
            with self._transaction(connection, "IMMEDIATE"):
                if connection.execute("DELETE FROM images WHERE filepath = ?", (filepath,)).rowcount == 0:
                    return False
                generation = self._next_generation(connection)
                connection.execute("INSERT INTO deletions (filepath, seq) VALUES (?, ?) "
                                   "ON CONFLICT (filepath) DO UPDATE SET seq = excluded.seq",
                                   (filepath, generation))
        return True

    def _get(self, filepath: str) -> Record | None:
        with _translated():
            row = self._connection().execute(
                "SELECT signature, metadata, sha256, added_at, features FROM images WHERE filepath = ?",
                (filepath,)).fetchone()
        if row is None:
            return None
        signature, metadata, sha256, added_at, blob = row
        return Record(filepath, np.frombuffer(signature, dtype=np.int8).copy(), json.loads(metadata),
                      sha256, added_at, None if blob is None else features.decode(blob))

    def _search(self, queries: np.ndarray, size: int, cutoff: float) -> list[Match]:
        with _translated():
            connection = self._connection()
            state = self._process()
            # One read transaction: the cache refresh and the metadata of the hits come
            # from the same snapshot. The lock is taken first, so no other thread can
            # have moved the cache past this snapshot.
            with state.lock, self._transaction(connection):
                matrix = self._refresh(connection, state)
                if matrix.size == 0:
                    return []
                slots, distances = matrix.scan(queries, cutoff, size)
                paths = [matrix.paths[slot] for slot in slots.tolist()]
                ranked = best_matches(paths, distances, [{}] * len(paths), size, cutoff)
                metadata = self._metadata(connection, [hit.filepath for hit in ranked])
        return [dataclasses.replace(hit, metadata=metadata[hit.filepath]) for hit in ranked]

    def _search_words(self, words: np.ndarray, size: int) -> list[WordHit]:
        with _translated():
            connection = self._connection()
            state = self._process()
            with state.lock, self._transaction(connection):
                self._refresh(connection, state)
                return [WordHit(path, score) for path, score in state.words.search(words, size)]

    def _get_features(self, filepaths: Sequence[str]) -> dict[str, features.Features]:
        found: dict[str, features.Features] = {}
        with _translated():
            connection = self._connection()
            for start in range(0, len(filepaths), _CHUNK):
                chunk = filepaths[start:start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for filepath, blob in connection.execute(
                        f"SELECT filepath, features FROM images WHERE filepath IN ({marks}) "
                        "AND features IS NOT NULL", chunk):
                    found[filepath] = features.decode(blob)
        return found

    def _missing_features(self) -> int:
        with _translated():
            count: int = self._connection().execute(
                "SELECT count(*) FROM images WHERE features IS NULL").fetchone()[0]
        return count

    def _count(self) -> int:
        with _translated():
            count: int = self._connection().execute("SELECT count(*) FROM images").fetchone()[0]
        return count

    def _list(self, offset: int, limit: int) -> list[str]:
        with _translated():
            rows = self._connection().execute(
                "SELECT filepath FROM images ORDER BY filepath LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        return [filepath for (filepath,) in rows]

    def check(self) -> None:
        """Raise StoreUnavailable unless the file can be read and its write lock taken.

        The probe write is rolled back, so a read-only or corrupt file, or a writer
        holding the lock longer than ``timeout``, fails the check and nothing changes.
        """
        try:
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("UPDATE state SET generation = generation WHERE id = 0")
            finally:
                connection.execute("ROLLBACK")
        except (sqlite3.Error, StoreError) as exc:
            raise StoreUnavailable(f"the local store at {self.path} is unavailable: {exc}") from exc

    def close(self) -> None:
        """Close this process's connections; the store must not be used afterwards."""
        self._closed = True
        state = self._process()
        with state.lock:
            for connection in list(state.connections):
                connection.close()
            state.matrix = _Matrix()
            state.words = _WordIndex()

    # --- the in-memory cache ---------------------------------------------------------

    def _refresh(self, connection: sqlite3.Connection, state: _ProcessState) -> _Matrix:
        """Bring ``state.matrix`` up to the generation of the current read snapshot."""
        generation: int = connection.execute("SELECT generation FROM state WHERE id = 0").fetchone()[0]
        matrix = state.matrix
        if generation == matrix.generation:
            return matrix
        if generation < matrix.generation:  # the file was replaced: start again
            matrix = state.matrix = _Matrix()
            state.words = _WordIndex()
        since = matrix.generation
        index = state.words
        for (filepath,) in connection.execute("SELECT filepath FROM deletions WHERE seq > ?", (since,)):
            matrix.remove(filepath)
            index.remove(filepath)
        if since == 0:  # a first load: size the matrix once
            matrix.reserve(connection.execute("SELECT count(*) FROM images").fetchone()[0])
        cursor = connection.execute("SELECT filepath, signature, words FROM images WHERE seq > ?", (since,))
        # In slices, so a first load of a million rows never holds them all as bytes.
        while rows := cursor.fetchmany(_LOAD_SLICE):
            paths, blobs, word_blobs = zip(*rows, strict=True)
            signatures = np.frombuffer(b"".join(blobs), dtype=np.int8)
            matrix.put(paths, signatures.reshape(len(rows), sig.SIGNATURE_LENGTH))
            for path, word_blob in zip(paths, word_blobs, strict=True):
                index.put(path, None if word_blob is None else np.frombuffer(word_blob, "<u2"))
        matrix.generation = generation
        return matrix

    @staticmethod
    def _metadata(connection: sqlite3.Connection, filepaths: Sequence[str]) -> dict[str, Any]:
        """filepath -> decoded metadata, for a few filepaths (the hits)."""
        metadata: dict[str, Any] = {}
        for start in range(0, len(filepaths), _CHUNK):
            chunk = filepaths[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for filepath, text in connection.execute(
                    f"SELECT filepath, metadata FROM images WHERE filepath IN ({marks})", chunk):
                metadata[filepath] = json.loads(text)
        return metadata
