"""The store boundary: what every signature store implements.

A store keeps one record per ``filepath`` (upsert semantics: adding a filepath again
replaces it) and answers nearest-signature queries. The contract:

* :meth:`SignatureStore.upsert` / :meth:`upsert_many` — insert or replace by filepath.
  When it returns, the record is durable and visible to every process's ``search``.
* :meth:`delete` — remove by filepath; says whether there was one.
* :meth:`search` — given one or several query signatures (e.g. the 8 orientations of
  one image), return records whose distance to *any* of them is at most ``cutoff``,
  one entry per filepath (its smallest distance), nearest first, at most ``size``.
* :meth:`search_words` — the second signal (:mod:`match.features`): stored images
  ranked by the visual words they share with a query (rarer words weigh more), at most
  ``size``, best first. Only candidates: the caller verifies them with
  :meth:`get_features` and :func:`match.features.verify`.
* :meth:`get_features` — the stored local features of some filepaths;
  :meth:`missing_features` — how many records have none (added before local features,
  or with them turned off; ``match reindex`` backfills them).
* :meth:`count`, :meth:`list` (filepaths in a stable order: ascending filepath),
  :meth:`get`, :meth:`check` (readiness: raises :class:`StoreUnavailable`), :meth:`close`.

Every backend reranks with :func:`match.signature.distances`, the one distance, so
backends agree on what counts as a match; a backend may only differ in *which
candidates* it considers (the embedded store scans everything; Elasticsearch
pre-filters on signature words and kNN).

The public methods are ``@final``: they validate once here, then call the backend's
``_method`` (the pattern of ThreatExchange's ``storage/interfaces.py``), so a backend
never sees a malformed signature or a negative offset.
"""

from __future__ import annotations

import abc
import builtins
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

import numpy as np

from match import signature as sig
from match import vocabulary
from match.features import Features

__all__ = ["Record", "Match", "WordHit", "SignatureStore", "MAX_FILEPATH_LENGTH"]

#: Longest filepath a store accepts (characters). Elasticsearch keyword terms and
#: SQLite index keys stay small and fast below this.
MAX_FILEPATH_LENGTH = 1024


@dataclass(frozen=True)
class Record:
    """One indexed image.

    ``signature`` is the int8 (648,) Goldberg signature; ``metadata`` a JSON object;
    ``sha256`` the hex digest of the image bytes; ``added_at`` seconds since the epoch
    (set by the store when ``None``). ``features`` are its local features
    (:mod:`match.features`, possibly with no keypoints), or None when it has none
    stored (local features off, or a record from before them); ``words`` are the
    visual words of those features (int32, one per keypoint), which the store indexes.
    """

    filepath: str
    signature: np.ndarray
    metadata: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    added_at: float | None = None
    features: Features | None = None

    @property
    def words(self) -> np.ndarray:
        """Distinct visual words of the features, sorted (int32; empty without features)."""
        if self.features is None or len(self.features) == 0:
            return np.zeros(0, dtype=np.int32)
        return np.unique(vocabulary.load().words(self.features.descriptors))


@dataclass(frozen=True)
class Match:
    """One search hit: ``distance`` in [0, 1], 0 meaning identical signatures.

    A store's hits carry the signature distance only. :func:`match.fusion.fuse` adds
    the evidence of local features: ``inliers`` (RANSAC-consistent keypoint matches),
    ``region`` (``(x0, y0, x1, y1)``: the box of the stored image, in its pixels, that
    the query shows), ``found_by`` (``"signature"`` and/or ``"features"``) and, for a
    hit found by features alone, the score to report.
    """

    filepath: str
    distance: float
    metadata: Mapping[str, Any] = field(default_factory=dict)
    inliers: int | None = None
    region: tuple[int, int, int, int] | None = None
    found_by: tuple[str, ...] = ("signature",)
    reported_score: float | None = None

    @property
    def score(self) -> float:
        """The score the HTTP API reports, 0-100, higher is more similar.

        For a signature hit exactly what dsys/match reported: (1 - distance) x 100;
        for a hit found by features, :func:`match.fusion.inlier_score`.
        """
        if self.reported_score is not None:
            return self.reported_score
        return (1.0 - self.distance) * 100.0


@dataclass(frozen=True)
class WordHit:
    """A candidate of :meth:`SignatureStore.search_words`: ``score`` > 0, higher is better."""

    filepath: str
    score: float


def _check_filepath(filepath: str) -> None:
    if not isinstance(filepath, str) or not filepath:
        raise ValueError("filepath must be a non-empty string")
    if len(filepath) > MAX_FILEPATH_LENGTH:
        raise ValueError(f"filepath is longer than {MAX_FILEPATH_LENGTH} characters")
    if "\x00" in filepath:
        raise ValueError("filepath must not contain NUL characters")


def _check_record(record: Record) -> None:
    _check_filepath(record.filepath)
    signature = record.signature
    if (not isinstance(signature, np.ndarray) or signature.shape != (sig.SIGNATURE_LENGTH,)
            or signature.dtype != np.int8):
        raise ValueError(f"signature must be an int8 array of shape ({sig.SIGNATURE_LENGTH},)")
    if not isinstance(record.metadata, Mapping):
        raise ValueError("metadata must be a JSON object")
    try:
        json.dumps(record.metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serializable: {exc}") from exc
    features = record.features
    if features is not None:
        if not isinstance(features, Features):
            raise ValueError("features must be match.features.Features or None")
        n = len(features)
        if (features.points.shape != (n, 2) or features.descriptors.shape != (n, 32)
                or features.descriptors.dtype != np.uint8 or n > 65535):
            raise ValueError("features must have (n, 2) points and uint8 (n, 32) descriptors")


def _check_queries(signatures: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    queries = np.asarray(signatures)
    if queries.ndim == 1:
        queries = queries[np.newaxis, :]
    if queries.ndim != 2 or queries.shape[1] != sig.SIGNATURE_LENGTH or queries.shape[0] == 0:
        raise ValueError(f"query signatures must have shape (k, {sig.SIGNATURE_LENGTH}) with k >= 1")
    if queries.dtype.kind not in "iu" or queries.min() < -2 or queries.max() > 2:
        raise ValueError("query signatures must be integers in -2..2 (match.signature.generate)")
    return queries.astype(np.int8, copy=False)


class SignatureStore(abc.ABC):
    """A durable collection of signatures keyed by filepath. See the module docstring."""

    #: Short name used in settings and logs (``local``, ``elasticsearch``).
    name: str = ""

    @final
    def upsert(self, record: Record) -> None:
        """Insert or replace the record with this filepath."""
        _check_record(record)
        self._upsert_many([record])

    @final
    def upsert_many(self, records: Iterable[Record]) -> int:
        """Insert or replace many records (bulk); returns how many were written.

        All records are validated before anything is written.
        """
        batch = list(records)
        for record in batch:
            _check_record(record)
        if not batch:
            return 0
        # The last record of a filepath wins, as if they had been upserted in order.
        deduped = list({record.filepath: record for record in batch}.values())
        self._upsert_many(deduped)
        return len(deduped)

    @final
    def delete(self, filepath: str) -> bool:
        """Remove the record with this filepath; True if there was one."""
        _check_filepath(filepath)
        return self._delete(filepath)

    @final
    def get(self, filepath: str) -> Record | None:
        """The record with this filepath, or None."""
        _check_filepath(filepath)
        return self._get(filepath)

    @final
    def search(self, signatures: np.ndarray | Sequence[np.ndarray], *, size: int = 10,
               cutoff: float = sig.DEFAULT_CUTOFF) -> list[Match]:
        """Records within ``cutoff`` of any query signature, nearest first, deduped by filepath."""
        queries = _check_queries(signatures)
        if not isinstance(size, int) or size <= 0:
            raise ValueError("size must be a positive integer")
        if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and 0.0 <= cutoff <= 1.0):
            raise ValueError("cutoff must be a number between 0 and 1")
        return self._search(queries, size, float(cutoff))

    @final
    def search_words(self, words: np.ndarray | Sequence[int], *, size: int = 20) -> builtins.list[WordHit]:
        """Stored images sharing the most (idf-weighted) visual words with ``words``, best first."""
        query = np.unique(np.asarray(words, dtype=np.int64))
        if query.ndim != 1 or (query.size and (query[0] < 0 or query[-1] >= vocabulary.WORDS)):
            raise ValueError(f"words must be integers in 0..{vocabulary.WORDS - 1}")
        if not isinstance(size, int) or size <= 0:
            raise ValueError("size must be a positive integer")
        if query.size == 0:
            return []
        return self._search_words(query.astype(np.int32), size)

    @final
    def get_features(self, filepaths: Sequence[str]) -> dict[str, Features]:
        """filepath -> stored local features, for those of ``filepaths`` that have some."""
        for filepath in filepaths:
            _check_filepath(filepath)
        if not filepaths:
            return {}
        return self._get_features(builtins.list(dict.fromkeys(filepaths)))

    @final
    def missing_features(self) -> int:
        """How many records have no local features stored (``match reindex`` adds them)."""
        return self._missing_features()

    @final
    def count(self) -> int:
        """Number of records."""
        return self._count()

    @final
    def list(self, offset: int = 0, limit: int = 20) -> list[str]:
        """Filepaths in ascending order, skipping ``offset``, at most ``limit``."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("offset must be an integer >= 0")
        if not isinstance(limit, int) or limit <= 0:
            raise ValueError("limit must be a positive integer")
        return self._list(offset, limit)

    def check(self) -> None:  # noqa: B027 - a store with nothing to check answers at once
        """Readiness: return if the store answers, raise StoreUnavailable otherwise."""

    def close(self) -> None:  # noqa: B027 - a store holding nothing has nothing to release
        """Release connections and files. The store must not be used afterwards."""

    # --- what a backend implements ---------------------------------------------------

    @abc.abstractmethod
    def _upsert_many(self, records: Sequence[Record]) -> None:
        """Write validated records, distinct filepaths, atomically per record."""

    @abc.abstractmethod
    def _delete(self, filepath: str) -> bool: ...

    @abc.abstractmethod
    def _get(self, filepath: str) -> Record | None: ...

    @abc.abstractmethod
    def _search(self, queries: np.ndarray, size: int, cutoff: float) -> builtins.list[Match]:
        """``queries`` is int8 (k, 648); rerank with match.signature.distances."""

    @abc.abstractmethod
    def _search_words(self, words: np.ndarray, size: int) -> builtins.list[WordHit]:
        """``words`` are distinct sorted int32; at most ``size`` hits with score > 0."""

    @abc.abstractmethod
    def _get_features(self, filepaths: Sequence[str]) -> dict[str, Features]: ...

    @abc.abstractmethod
    def _missing_features(self) -> int: ...

    @abc.abstractmethod
    def _count(self) -> int: ...

    @abc.abstractmethod
    def _list(self, offset: int, limit: int) -> builtins.list[str]: ...

    def __enter__(self) -> SignatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def best_matches(filepaths: Sequence[str], distances: np.ndarray, metadata: Sequence[Mapping[str, Any]],
                 size: int, cutoff: float) -> list[Match]:
    """Dedupe candidates by filepath (smallest distance), keep <= cutoff, nearest first.

    ``distances`` has one entry per candidate; shared by every backend so ties and
    the cutoff are decided the same way (ties broken by filepath for stable output).
    """
    best: dict[str, tuple[float, Mapping[str, Any]]] = {}
    for path, dist, meta in zip(filepaths, distances.tolist(), metadata, strict=True):
        if dist <= cutoff and (path not in best or dist < best[path][0]):
            best[path] = (dist, meta)
    ranked = sorted(best.items(), key=lambda item: (item[1][0], item[0]))[:size]
    return [Match(path, dist, meta) for path, (dist, meta) in ranked]
