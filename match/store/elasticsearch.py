"""The Elasticsearch store: signatures in one index, searched by words and kNN.

This is the only module that imports ``elasticsearch``; everything it raises is a
:mod:`match.errors` error, translated at this boundary (``raise ... from exc``).

The design, step by step:

**Mapping** (created at startup when the index is missing; ``dynamic: strict``)::

    filepath   keyword            the key; sorted on by list()
    signature  binary             the exact int8 (648,) signature, base64 in _source:
                                  what the rerank reads
    vector     dense_vector       the same signature as a byte vector (dims 648,
                                  l2_norm) for kNN; excluded from _source
    word_0..62 keyword            image-match's 63 "simple words" (words(sig)), one
                                  field each for term queries; excluded from _source
    metadata   object, enabled: false   the user's JSON, kept in _source and never
                                  mapped, so arbitrary keys or nesting can't explode
                                  the mapping
    sha256     keyword            hex digest of the image bytes
    added_at   date (epoch_second)
    words      keyword            the distinct visual words of its local features
                                  (:mod:`match.features`), an array of strings, for
                                  BM25-ranked candidates; excluded from _source
    features   binary, store: true    :func:`match.features.encode`'s bytes, read as
                                  a stored field (never by a signature search);
                                  excluded from _source so they are not kept twice
    keypoints  integer            how many keypoints; absent when the features were
                                  not computed (what ``missing_features`` counts)

An index made before local features (without ``words``, ``features``, ``keypoints``)
keeps working: the three fields are added with a put-mapping (adding fields is
allowed), its records read back with ``features=None`` until ``match reindex``
backfills them. Its ``_source`` excludes can't be changed, so such an index keeps the
backfilled words and features in ``_source`` too (about twice the bytes; a new index
does not).

Two processes may create the index at once: the loser's ``resource_already_exists``
is expected and it validates the winner's mapping instead. An existing index whose
mapping lacks a field, or maps it with another type, raises
:class:`~match.errors.IncompatibleIndex` naming the field (match never rewrites a
mapping it did not create).

**Ids.** A document's ``_id`` is the SHA-256 of its filepath (ids are limited to 512
bytes; filepaths are not). Adding a filepath again is one index request that replaces
the document, and concurrent adds of one filepath can't leave duplicates (the store
this replaces searched, added, then deleted: three round trips and a race).

**Search.** All orientations of a query go in one ``_msearch`` round trip. Per
orientation there are two searches: a ``bool`` ``should`` of 63 ``term`` queries on
the words (a candidate shares at least one word; more shared, rarer words score
higher) and, with ``MATCH_ES_KNN``, a ``knn`` search on ``vector`` (the nearest
signatures in l2). Each returns ``MATCH_ES_CANDIDATES`` hits. They are separate
searches because ``knn`` beside ``query`` in one search ranks the union by summed
scores and cuts it at ``size``: a common word matches thousands of documents, all
outranking kNN's tiny l2 scores, which dropped exactly the neighbours that share no
word. Every candidate is then reranked with :func:`match.signature.distances` (the
one distance every backend uses), deduped by filepath and cut by
:func:`match.store.base.best_matches`. Words alone miss close pairs that share no
word (rhsimplex/image-match#64); kNN catches those (docs/elasticsearch.md has the
recall figures of ``bench/es_recall.py``).

**Visual words.** ``search_words`` is one search: a ``bool`` ``should`` of one
``term`` per query word on ``words``, scored by BM25 (rarer words weigh more, as in
Philbin et al.'s tf-idf). A query has up to a couple of thousand words; Elasticsearch
caps the clauses of a query (``maxClauseCount``, from its heap and search pool: 16,384
on a 1 GB node, 1,024 at least). When a node refuses the query for that, the store
learns the cap from the error and sends the words in chunks of at most the cap, one
search each in one ``_msearch``, summing each image's scores over the chunks (exact for
an image in every chunk's top hits; the chunks return more hits than asked to make
that likely). ``get_features`` is one ``mget`` of the stored ``features`` field.

**Refresh.** A single add uses ``MATCH_ES_REFRESH`` (default ``wait_for``: what a
client is told was added is searchable). ``upsert_many`` bulk-loads without per-chunk
refresh and, unless the policy is ``false``, refreshes the index once at the end of
the call, so a bulk is searchable when it returns without paying a refresh per chunk.
Per-item bulk failures raise :class:`~match.errors.StoreError` listing the filepaths.

**Pagination.** ``list`` sorts on ``filepath``; past the 10,000-hit window it pages
with a point in time and ``search_after``, fetching only sort values.

**Failure.** Each request is bounded by ``MATCH_ES_TIMEOUT`` (bulk chunks by at least
30 s) with a couple of retries across the configured nodes; an unreachable or red
cluster raises :class:`~match.errors.StoreUnavailable` (HTTP 503). A server of another
major version than the client (an 8.x server refuses the 9.x client) is a
:class:`~match.errors.StoreError` saying so. The store keeps no broken state:
when Elasticsearch is down at startup, :meth:`ElasticsearchStore.from_config` logs it
and the index check is retried on the next call, so the store recovers by itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import elastic_transport
import elasticsearch
import numpy as np
from elasticsearch import Elasticsearch, helpers

from match import features as feat
from match import signature as sig
from match.errors import IncompatibleIndex, StoreError, StoreUnavailable
from match.store.base import Match, Record, SignatureStore, WordHit, best_matches

__all__ = ["ElasticsearchStore", "index_body", "document_id"]

log = logging.getLogger(__name__)

#: Number of signature words (image-match's N) and their field names.
WORD_COUNT = 63
WORD_FIELDS = tuple(f"word_{i}" for i in range(WORD_COUNT))

#: Elasticsearch's from + size window; list() pages with search_after beyond it.
_MAX_WINDOW = 10_000
#: Point-in-time keep-alive between two pages of list().
_PIT_KEEP_ALIVE = "1m"
#: Records per bulk request.
_BULK_CHUNK = 500
#: Least seconds allowed per bulk chunk (and the final refresh): indexing 500 vectors
#: into the HNSW graph of a busy node can take longer than one small request may.
_BULK_MIN_TIMEOUT = 30.0
#: Fields search() reads from each candidate's _source.
_CANDIDATE_SOURCE = ["filepath", "signature", "metadata"]
#: Fields _get reads from _source (an index from before local features keeps words
#: and features in _source too: never fetched from there).
_RECORD_SOURCE = ["filepath", "signature", "metadata", "sha256", "added_at"]
#: The fields local features add to the mapping (put on an index made before them).
_FEATURE_PROPERTIES: dict[str, dict[str, Any]] = {
    "words": {"type": "keyword", "doc_values": False},
    "features": {"type": "binary", "store": True},
    "keypoints": {"type": "integer"},
}
#: A chunked word search asks each chunk for this many times the hits wanted.
_CHUNK_OVERFETCH = 4
#: The cap in Elasticsearch's "too many clauses" error.
_MAX_CLAUSES_PATTERN = re.compile(r"maxClauseCount is set to (\d+)")


#: Priority of the index template match keeps for its index (above the built-in
#: templates' 100-ish, so an overlapping catch-all one doesn't win).
_TEMPLATE_PRIORITY = 500


def template_name(index: str) -> str:
    """Name of the index template that carries match's mapping for ``index``."""
    return f"match-{index}"


def document_id(filepath: str) -> str:
    """The ``_id`` of a filepath's document: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(filepath.encode("utf-8")).hexdigest()


def index_body(*, shards: int = 1, replicas: int = 1, vector_index: str = "hnsw",
               word_type: str = "keyword", refresh_interval: str = "1s") -> dict[str, Any]:
    """Settings and mappings of a new index (see the module docstring).

    ``vector_index`` is the kNN structure of ``vector``: ``hnsw`` (approximate, scales)
    or ``flat`` (exact brute force over every vector). ``word_type`` is ``keyword`` (what
    match creates) or ``integer`` (also accepted; bench/es_recall.py compares them).
    """
    words = {name: {"type": word_type, "doc_values": False} for name in WORD_FIELDS}
    return {
        "settings": {
            "number_of_shards": shards,
            "number_of_replicas": replicas,
            "refresh_interval": refresh_interval,
        },
        "mappings": {
            "dynamic": "strict",
            # vector and words are derived from signature: no need to keep them twice.
            "_source": {"excludes": ["vector", "word_*", "words", "features"]},
            "properties": {
                "filepath": {"type": "keyword"},
                "signature": {"type": "binary"},
                "vector": {
                    "type": "dense_vector",
                    "element_type": "byte",
                    "dims": sig.SIGNATURE_LENGTH,
                    "index": True,
                    "similarity": "l2_norm",
                    "index_options": {"type": vector_index},
                },
                **words,
                "metadata": {"type": "object", "enabled": False},
                "sha256": {"type": "keyword", "doc_values": False},
                "added_at": {"type": "date", "format": "epoch_second"},
                **_FEATURE_PROPERTIES,
            },
        },
    }


#: What an existing index must map, field -> {attribute: value or tuple of accepted
#: values}, for this store to read and write it (a subset of index_body's mapping:
#: options that don't change the data, like doc_values or the kNN structure, may differ;
#: term queries on the words work on keyword and numeric fields alike).
_REQUIRED_FIELDS: dict[str, dict[str, Any]] = {
    "filepath": {"type": "keyword"},
    "signature": {"type": "binary"},
    "vector": {"type": "dense_vector", "element_type": "byte", "dims": sig.SIGNATURE_LENGTH,
               "similarity": "l2_norm"},
    **{name: {"type": ("keyword", "integer", "long")} for name in WORD_FIELDS},
    "metadata": {"enabled": False},
    "sha256": {"type": "keyword"},
    "added_at": {"type": "date"},
    "words": {"type": "keyword"},
    "features": {"type": "binary", "store": True},
    "keypoints": {"type": ("integer", "long", "short")},
}


def _mapping_problems(mapping: Mapping[str, Any]) -> list[str]:
    """What makes an index mapping unusable, one line per field (empty when fine)."""
    properties = mapping.get("properties", {})
    problems = []
    for name, required in _REQUIRED_FIELDS.items():
        field = properties.get(name)
        if field is None:
            problems.append(f"field {name!r} is missing")
            continue
        for attribute, expected in required.items():
            # An object field has no "type" in the mapping ES returns.
            found = field.get(attribute, "object" if attribute == "type" else None)
            if attribute == "element_type" and found is None:
                found = "float"
            if attribute == "store" and found is None:
                found = False
            accepted = expected if isinstance(expected, tuple) else (expected,)
            if found not in accepted:
                wanted = " or ".join(repr(value) for value in accepted)
                problems.append(f"field {name!r} has {attribute} {found!r}, expected {wanted}")
    return problems


def _error_type(exc: elasticsearch.ApiError) -> str:
    """The ``error.type`` of an API error body, or ''."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    return str(error.get("type", "")) if isinstance(error, dict) else ""


#: Error types a cluster gives while a node leaves or a shard moves: the same request
#: succeeds a moment later on another copy. Seen in tests/store/test_es_cluster.py: a
#: search whose query phase ran on a node that then shut down fails its fetch phase with
#: ``404 search_context_missing_exception``. These are retried once, then answered 503.
_TRANSIENT_ERRORS = frozenset({
    "search_context_missing_exception",
    "no_shard_available_action_exception",
    "node_not_connected_exception",
    "node_disconnected_exception",
    "node_closed_exception",
    "connect_transport_exception",
    "shard_not_found_exception",
    "primary_missing_action_exception",
    "unavailable_shards_exception",
})

#: Seconds to wait before the one retry of a search that failed transiently.
_TRANSIENT_RETRY_DELAY = 0.25


def _item_error_type(error: object) -> str:
    """The type of an msearch item error: its root cause when the top level is a
    ``search_phase_execution_exception`` wrapping shard failures."""
    if not isinstance(error, dict):
        return ""
    kind = str(error.get("type", ""))
    causes = error.get("root_cause")
    if kind == "search_phase_execution_exception" and isinstance(causes, list) and causes:
        first = causes[0]
        if isinstance(first, dict):
            return str(first.get("type", kind))
    return kind


class ElasticsearchStore(SignatureStore):
    """Signatures in one Elasticsearch index (see the module docstring).

    Usage::

        store = ElasticsearchStore(["http://127.0.0.1:9200"], index="images")
        store.upsert(Record("a.jpg", signature.generate(pixels)))
        store.search(signature.generate_all(query_pixels))  # 8 orientations, 1 round trip
    """

    name = "elasticsearch"

    def __init__(self, urls: Sequence[str], *, index: str = "images", api_key: str = "",
                 username: str = "", password: str = "", ca_certs: str = "",
                 timeout: float = 5.0, knn: bool = True, refresh: str = "wait_for",
                 candidates: int = 100, num_candidates: int = 200, shards: int = 1,
                 replicas: int = 1, max_retries: int = 2) -> None:
        if not urls:
            raise ValueError("at least one Elasticsearch URL is needed")
        if refresh not in ("wait_for", "true", "false"):
            raise ValueError(f"refresh must be one of wait_for, true, false; got {refresh!r}")
        if not 0 < candidates <= num_candidates <= _MAX_WINDOW:
            raise ValueError(f"need 0 < candidates <= num_candidates <= {_MAX_WINDOW}")
        self.urls = list(urls)
        self.index = index
        self.timeout = timeout
        self.knn = knn
        self.refresh = refresh
        self.candidates = candidates
        self.num_candidates = num_candidates
        self._index_body = index_body(shards=shards, replicas=replicas)
        options: dict[str, Any] = {
            "request_timeout": timeout,
            "max_retries": max_retries,
            "retry_on_timeout": True,
        }
        if api_key:
            options["api_key"] = api_key
        elif username:
            options["basic_auth"] = (username, password)
        if ca_certs:
            options["ca_certs"] = ca_certs
        self._client = Elasticsearch(self.urls, **options)
        self._ready = False
        self._ready_lock = threading.Lock()
        #: The node's cap on a query's clauses, once a word search ran into it.
        self._max_clauses: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ElasticsearchStore:
        """Build the store from match settings and create or check the index.

        When Elasticsearch does not answer, the store is still returned (logged as a
        warning); the index is checked again on the next call, and :meth:`check`
        reports why it is unavailable. An incompatible index raises at once.
        """
        urls = [url.strip() for url in str(config["ELASTICSEARCH_URL"]).split(",") if url.strip()]
        store = cls(
            urls,
            index=config["MATCH_INDEX"],
            api_key=config.get("MATCH_ES_API_KEY", ""),
            username=config.get("MATCH_ES_USERNAME", ""),
            password=config.get("MATCH_ES_PASSWORD", ""),
            ca_certs=config.get("MATCH_ES_CA_CERTS", ""),
            timeout=float(config.get("MATCH_ES_TIMEOUT", 5.0)),
            knn=bool(config.get("MATCH_ES_KNN", True)),
            refresh=str(config.get("MATCH_ES_REFRESH", "wait_for")),
            candidates=int(config.get("MATCH_ES_CANDIDATES", 100)),
            num_candidates=2 * int(config.get("MATCH_ES_CANDIDATES", 100)),
            shards=int(config.get("MATCH_ES_SHARDS", 1)),
            replicas=int(config.get("MATCH_ES_REPLICAS", 1)),
        )
        try:
            store._ensure_index()
        except StoreUnavailable as exc:
            log.warning("%s; the index will be created or checked on first use", exc.message)
        return store

    # --- failure translation and the index ----------------------------------------

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn elasticsearch/elastic_transport errors into match errors."""
        try:
            yield
        except elasticsearch.ApiError as exc:
            if exc.meta.status == 404 and _error_type(exc) == "index_not_found_exception":
                # Deleted under us: create it again on the next call.
                self._ready = False
                raise StoreUnavailable(f"Elasticsearch index {self.index!r} is missing while "
                                       f"trying to {action}; it is recreated on the next request") from exc
            if _error_type(exc) == "media_type_header_exception":
                client_version = ".".join(map(str, elasticsearch.VERSION))
                raise StoreError(
                    f"Elasticsearch at {self._where()} refused the API version of the Python client "
                    f"elasticsearch {client_version}: pair client and server majors "
                    f"(pip install 'elasticsearch>=8,<9' for an 8.x cluster; see docs/elasticsearch.md): "
                    f"{exc.message}") from exc
            cause = _item_error_type(exc.body.get("error") if isinstance(exc.body, dict) else None)
            if cause in _TRANSIENT_ERRORS:
                raise StoreUnavailable(f"Elasticsearch at {self._where()} could not {action} while "
                                       f"the cluster moves shards ({cause}); retry") from exc
            if _error_type(exc) in ("index_closed_exception", "cluster_block_exception"):
                # A closed index, or a block (a read-only index, disk flood stage): the
                # cluster answers but cannot serve this index now. Retry later (503).
                raise StoreUnavailable(f"Elasticsearch index {self.index!r} cannot {action} now: "
                                       f"{_error_type(exc)}") from exc
            if exc.meta.status in (429, 502, 503, 504):
                raise StoreUnavailable(f"Elasticsearch at {self._where()} could not {action}: "
                                       f"{exc.meta.status} {exc.message}") from exc
            raise StoreError(f"Elasticsearch refused to {action}: {exc.meta.status} {exc}") from exc
        except elastic_transport.TransportError as exc:  # connection refused, timeout, TLS
            raise StoreUnavailable(f"Elasticsearch at {self._where()} did not answer while trying to "
                                   f"{action} (timeout {self.timeout:g} s): {exc}") from exc

    def _where(self) -> str:
        return ", ".join(self.urls)

    def _ensure_index(self) -> None:
        """Create the index if missing, else check its mapping; once per store."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self._translate(f"create index {self.index!r}"):
                self._put_template()
                try:
                    self._client.indices.create(index=self.index, **self._index_body)
                    log.info("created Elasticsearch index %r", self.index)
                except elasticsearch.BadRequestError as exc:
                    if _error_type(exc) != "resource_already_exists_exception":
                        raise
                response = self._client.indices.get_mapping(index=self.index)
                if self._add_feature_fields(response.body):
                    response = self._client.indices.get_mapping(index=self.index)
            for index_name, body in response.body.items():
                problems = _mapping_problems(body.get("mappings", {}))
                if problems:
                    raise IncompatibleIndex(
                        f"Elasticsearch index {index_name!r} has a mapping match cannot use: "
                        + "; ".join(problems)
                        + ". Point MATCH_INDEX at a new index name (match creates it) or reindex.")
            self._ready = True

    def _add_feature_fields(self, mappings: Mapping[str, Any]) -> bool:
        """Add the local-feature fields to an index made before them; True if any were.

        Adding fields is a compatible mapping change; the records already there read
        back with ``features=None`` until ``match reindex`` backfills them.
        """
        added = False
        for index_name, body in mappings.items():
            properties = body.get("mappings", {}).get("properties", {})
            missing = {name: spec for name, spec in _FEATURE_PROPERTIES.items() if name not in properties}
            if not missing or "filepath" not in properties:
                continue  # complete, or not match's index at all (_mapping_problems says so)
            self._client.indices.put_mapping(index=index_name, properties=missing)
            log.info("added the local-feature fields %s to Elasticsearch index %r (made before them); "
                     "`match reindex` backfills its records' features", ", ".join(sorted(missing)),
                     index_name)
            added = True
        return added

    def _put_template(self) -> None:
        """Keep an index template with match's settings and mapping for exactly this index.

        Elasticsearch creates a missing index on the first write to it. Without the
        template, an index deleted while match runs (``curl -XDELETE .../images`` is how
        match users have always reset it) comes back from the next ``/add`` with a
        dynamic mapping on which every search fails; with it, it comes back as match
        creates it. Refused (no ``manage_index_templates`` privilege, or another
        template at this priority overlapping the name): logged, and match goes on.
        """
        try:
            self._client.indices.put_index_template(
                name=template_name(self.index), index_patterns=[self.index], priority=_TEMPLATE_PRIORITY,
                template=self._index_body,
                meta={"managed_by": "match", "description": f"match's mapping for the index {self.index!r}, "
                      "used when a write recreates it after it was deleted"})
        except elasticsearch.ApiError as exc:
            if exc.meta.status not in (400, 403):
                raise
            log.warning("could not keep the index template %r (%s %s): if index %r is deleted while "
                        "match runs, restart match after the next write", template_name(self.index),
                        exc.meta.status, _error_type(exc) or exc.message, self.index)

    def check(self) -> None:
        """Raise StoreUnavailable unless the index exists and its health is not red."""
        self._ensure_index()
        with self._translate("report cluster health"):
            health = self._client.options(request_timeout=self.timeout, max_retries=0).cluster.health(
                index=self.index, timeout=f"{max(1, int(self.timeout))}s")
        if health["status"] == "red":
            raise StoreUnavailable(f"Elasticsearch index {self.index!r} is red (a primary shard "
                                   f"is unassigned): {health['unassigned_shards']} unassigned shard(s)")

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    # --- writes -------------------------------------------------------------------

    def _document(self, record: Record) -> dict[str, Any]:
        signature = np.asarray(record.signature, dtype=np.int8)
        words = sig.words(signature)
        document: dict[str, Any] = {
            "filepath": record.filepath,
            "signature": base64.b64encode(signature.tobytes()).decode("ascii"),
            "vector": signature.tolist(),
            "metadata": dict(record.metadata),
            "sha256": record.sha256,
            "added_at": time.time() if record.added_at is None else record.added_at,
        }
        document.update({name: str(int(word)) for name, word in zip(WORD_FIELDS, words, strict=True)})
        if record.features is not None:
            document["words"] = [str(int(word)) for word in record.words]
            document["features"] = base64.b64encode(feat.encode(record.features)).decode("ascii")
            document["keypoints"] = len(record.features)
        return document

    def _upsert_many(self, records: Sequence[Record]) -> None:
        self._ensure_index()
        if len(records) == 1:
            record = records[0]
            with self._translate(f"add {record.filepath!r}"):
                self._client.index(index=self.index, id=document_id(record.filepath),
                                   document=self._document(record), refresh=self.refresh)
            return
        actions = ({"_index": self.index, "_id": document_id(record.filepath),
                    "_source": self._document(record)} for record in records)
        by_id = {document_id(record.filepath): record.filepath for record in records}
        failed: list[str] = []
        with self._translate(f"bulk-add {len(records)} records"):
            client = self._client.options(request_timeout=max(self.timeout, _BULK_MIN_TIMEOUT))
            for ok, item in helpers.streaming_bulk(client, actions, chunk_size=_BULK_CHUNK,
                                                   raise_on_error=False, raise_on_exception=True,
                                                   max_retries=3, initial_backoff=1):
                if not ok:
                    result = item.get("index", {})
                    error = result.get("error", {})
                    reason = error.get("reason", error) if isinstance(error, dict) else error
                    failed.append(f"{by_id.get(result.get('_id'), result.get('_id'))} ({reason})")
            if self.refresh != "false":
                client.indices.refresh(index=self.index)
        if failed:
            shown = "; ".join(failed[:20]) + (f"; and {len(failed) - 20} more" if len(failed) > 20 else "")
            raise StoreError(f"Elasticsearch did not write {len(failed)} of {len(records)} records: {shown}")

    def _delete(self, filepath: str) -> bool:
        self._ensure_index()
        doc_id = document_id(filepath)
        with self._translate(f"delete {filepath!r}"):
            try:
                if self.refresh == "wait_for":
                    # A delete waits for the next refresh (up to refresh_interval, 1 s) even
                    # when there is nothing to delete; a realtime get answers a miss at once.
                    self._client.get(index=self.index, id=doc_id, source=False)
                self._client.delete(index=self.index, id=doc_id, refresh=self.refresh)
            except elasticsearch.NotFoundError as exc:
                if _error_type(exc) == "index_not_found_exception":
                    raise
                return False
        return True

    # --- reads --------------------------------------------------------------------

    def _get(self, filepath: str) -> Record | None:
        self._ensure_index()
        with self._translate(f"get {filepath!r}"):
            try:
                response = self._client.get(index=self.index, id=document_id(filepath),
                                            source=_RECORD_SOURCE, stored_fields=["features"])
            except elasticsearch.NotFoundError as exc:
                if _error_type(exc) == "index_not_found_exception":
                    raise
                return None
        source = response["_source"]
        return Record(
            filepath=source["filepath"],
            signature=_decode(source["signature"]),
            metadata=source.get("metadata") or {},
            sha256=source.get("sha256"),
            added_at=source.get("added_at"),
            features=_stored_features(response.body, filepath),
        )

    def _count(self) -> int:
        self._ensure_index()
        with self._translate("count records"):
            return int(self._client.count(index=self.index)["count"])

    def _searches(self, query: np.ndarray) -> list[dict[str, Any]]:
        """One orientation's searches: the word disjunction, and kNN when enabled.

        They are two searches, not ``knn`` beside ``query`` in one: a combined search
        ranks the union by the sum of scores and cuts it at ``size``, and a common word
        can match thousands of documents whose word scores all outrank kNN's small
        l2 scores, so the kNN-only neighbours (those sharing no word) were cut.
        """
        words = sig.words(query)
        bodies: list[dict[str, Any]] = [{
            "size": self.candidates,
            "_source": _CANDIDATE_SOURCE,
            "track_total_hits": False,
            "query": {"bool": {
                "should": [{"term": {name: str(int(word))}}
                           for name, word in zip(WORD_FIELDS, words, strict=True)],
                "minimum_should_match": 1,
            }},
        }]
        if self.knn:
            bodies.append({
                "size": self.candidates,
                "_source": _CANDIDATE_SOURCE,
                "knn": {"field": "vector", "query_vector": query.tolist(), "k": self.candidates,
                        "num_candidates": self.num_candidates},
            })
        return bodies

    def _search(self, queries: np.ndarray, size: int, cutoff: float) -> list[Match]:
        self._ensure_index()
        results = self._msearch([body for query in queries for body in self._searches(query)], "search")
        self._raise_for_errors(results)
        candidates: dict[str, Mapping[str, Any]] = {}
        for result in results:
            for hit in result.get("hits", {}).get("hits", []):
                candidates[hit["_id"]] = hit["_source"]
        if not candidates:
            return []
        sources = list(candidates.values())
        matrix = np.stack([_decode(source["signature"]) for source in sources])
        distances = sig.distances(queries, matrix).min(axis=0)
        return best_matches([source["filepath"] for source in sources], distances,
                            [source.get("metadata") or {} for source in sources], size, cutoff)

    def _word_search(self, words: np.ndarray, size: int) -> dict[str, Any]:
        """The search body of one disjunction of ``words`` (BM25 over the ``words`` field)."""
        return {
            "size": size,
            "_source": ["filepath"],
            "track_total_hits": False,
            "query": {"bool": {"should": [{"term": {"words": str(int(word))}} for word in words]}},
        }

    def _search_words(self, words: np.ndarray, size: int) -> list[WordHit]:
        self._ensure_index()
        limit = self._max_clauses
        if limit is None or words.size <= limit:
            results = self._msearch([self._word_search(words, size)], "search visual words")
            error = results[0].get("error") if results else None
            learned = _max_clauses(error)
            if learned is None or learned >= words.size:
                self._raise_for_errors(results)
                return _word_hits(results, size)
            # This node caps clauses below the query's words: chunk from now on.
            log.info("Elasticsearch caps a query at %d clauses; word searches are sent in chunks", learned)
            self._max_clauses = limit = learned
        chunks = [words[start:start + limit] for start in range(0, words.size, limit)]
        per_chunk = min(_MAX_WINDOW, size * _CHUNK_OVERFETCH)
        results = self._msearch([self._word_search(chunk, per_chunk) for chunk in chunks],
                                "search visual words")
        self._raise_for_errors(results)
        return _word_hits(results, size)

    def _msearch(self, bodies: Sequence[Mapping[str, Any]], action: str) -> list[dict[str, Any]]:
        """The responses of one ``_msearch`` of ``bodies`` (``_id``, ``_score``, ``_source``
        of the hits), retried once when every error is transient (a node leaving)."""
        searches: list[Mapping[str, Any]] = []
        for body in bodies:
            searches += [{"index": self.index}, body]
        results: list[dict[str, Any]] = []
        for attempt in (1, 2):
            with self._translate(action):
                response = self._client.msearch(
                    searches=searches, filter_path="responses.hits.hits._id,responses.hits.hits._score,"
                                                   "responses.hits.hits._source,responses.error,"
                                                   "responses.status")
            results = response.get("responses", [])
            errors = [result["error"] for result in results if "error" in result]
            if attempt == 1 and errors and all(_item_error_type(error) in _TRANSIENT_ERRORS
                                               for error in errors):
                # A node left mid-search: the other copy answers a moment later.
                log.warning("%s failed transiently (%s); retrying once", action,
                            ", ".join(sorted({_item_error_type(error) for error in errors})))
                time.sleep(_TRANSIENT_RETRY_DELAY)
                continue
            break
        return results

    def _raise_for_errors(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Raise the match error of the first failed search in an msearch response."""
        for result in results:
            if "error" not in result:
                continue
            status = int(result.get("status", 500))
            error = result["error"]
            missing = isinstance(error, dict) and error.get("type") == "index_not_found_exception"
            if missing or status == 400:
                # Missing: recreated on the next call. 400: the query doesn't fit the
                # mapping (an index replaced under match): checked on the next call.
                self._ready = False
            message = f"Elasticsearch search failed: {status} {error}"
            blocked = isinstance(error, dict) and error.get("type") in ("index_closed_exception",
                                                                        "cluster_block_exception")
            transient = _item_error_type(error) in _TRANSIENT_ERRORS
            if missing or blocked or transient or status in (429, 502, 503, 504):
                raise StoreUnavailable(message)
            raise StoreError(message)

    def _get_features(self, filepaths: Sequence[str]) -> dict[str, feat.Features]:
        self._ensure_index()
        with self._translate(f"get the local features of {len(filepaths)} records"):
            response = self._client.mget(index=self.index, ids=[document_id(path) for path in filepaths],
                                         source=["filepath"], stored_fields=["features"],
                                         filter_path="docs._source,docs.fields,docs.found,docs.error")
        found: dict[str, feat.Features] = {}
        for doc in response.get("docs", []):
            if "error" in doc:
                error = doc["error"]
                if isinstance(error, dict) and error.get("type") == "index_not_found_exception":
                    self._ready = False
                    raise StoreUnavailable(f"Elasticsearch index {self.index!r} is missing: {error}")
                raise StoreError(f"Elasticsearch could not get local features: {error}")
            if not doc.get("found"):
                continue
            filepath = doc["_source"]["filepath"]
            features = _stored_features(doc, filepath)
            if features is not None:
                found[filepath] = features
        return found

    def _missing_features(self) -> int:
        self._ensure_index()
        with self._translate("count records without local features"):
            response = self._client.count(index=self.index,
                                          query={"bool": {"must_not": {"exists": {"field": "keypoints"}}}})
        return int(response["count"])

    def _list(self, offset: int, limit: int) -> list[str]:
        self._ensure_index()
        sort = [{"filepath": "asc"}]
        with self._translate("list records"):
            if offset + limit <= _MAX_WINDOW:
                response = self._client.search(index=self.index, from_=offset, size=limit, sort=sort,
                                               source=False, track_total_hits=False,
                                               filter_path="hits.hits.sort")
                return [hit["sort"][0] for hit in response.get("hits", {}).get("hits", [])]
            return self._list_deep(offset, limit, sort)

    def _list_deep(self, offset: int, limit: int, sort: list[dict[str, str]]) -> list[str]:
        """Page to ``offset`` with a point in time and search_after (sort values only)."""
        pit_id = self._client.open_point_in_time(index=self.index, keep_alive=_PIT_KEEP_ALIVE)["id"]
        try:
            search_after: list[Any] | None = None
            skipped = 0
            filepaths: list[str] = []
            while len(filepaths) < limit:
                wanted = offset - skipped if skipped < offset else limit - len(filepaths)
                page = min(_MAX_WINDOW, wanted)
                response = self._client.search(
                    pit={"id": pit_id, "keep_alive": _PIT_KEEP_ALIVE}, size=page, sort=sort,
                    search_after=search_after, source=False, track_total_hits=False,
                    filter_path="pit_id,hits.hits.sort")
                pit_id = response.get("pit_id", pit_id)
                hits = response.get("hits", {}).get("hits", [])
                if not hits:
                    break
                search_after = hits[-1]["sort"]
                if skipped < offset:
                    skipped += len(hits)
                else:
                    filepaths.extend(hit["sort"][0] for hit in hits)
                if len(hits) < page:
                    break
            return filepaths
        finally:
            with contextlib.suppress(elasticsearch.ApiError, elastic_transport.TransportError):
                self._client.close_point_in_time(id=pit_id)


def _stored_features(doc: Mapping[str, Any], filepath: str) -> feat.Features | None:
    """The ``features`` stored field of a get/mget document, decoded; None without."""
    values = doc.get("fields", {}).get("features")
    if not values:
        return None
    try:
        return feat.decode(base64.b64decode(values[0]))
    except ValueError as exc:
        raise StoreError(f"the local features stored for {filepath!r} are unreadable: {exc}") from exc


def _max_clauses(error: object) -> int | None:
    """The clause cap named by a "too many clauses" search error, else None."""
    match = _MAX_CLAUSES_PATTERN.search(str(error)) if error else None
    return int(match.group(1)) if match else None


def _word_hits(results: Sequence[Mapping[str, Any]], size: int) -> list[WordHit]:
    """Each image's score summed over the searches (one per chunk of words), best first."""
    scores: dict[str, float] = {}
    for result in results:
        for hit in result.get("hits", {}).get("hits", []):
            filepath = hit["_source"]["filepath"]
            scores[filepath] = scores.get(filepath, 0.0) + float(hit["_score"])
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:size]
    return [WordHit(filepath, score) for filepath, score in ranked if score > 0]


def _decode(value: str) -> np.ndarray:
    """The int8 (648,) signature from its base64 ``signature`` field."""
    return np.frombuffer(base64.b64decode(value), dtype=np.int8)
