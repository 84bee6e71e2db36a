"""Elasticsearch-only properties of the store, against the real test node.

The backend-neutral behaviour is in test_contract.py; here: the mapping, ids derived
from filepaths, concurrency, mapping explosion, deep pagination, kNN recall beyond the
words, bulk errors, local features (an index from before them upgraded in place, the
word search past the node's clause cap), and failure handling (a closed port, and a
loopback TCP relay that is switched off and on to play an Elasticsearch outage without
touching the shared node).
Raw Elasticsearch calls go through urllib, so ``match.store.elasticsearch`` stays the
only importer of ``elasticsearch``.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.serving import drop_index, free_port
from match import config as match_config
from match import signature as sig
from match.errors import IncompatibleIndex, StoreError, StoreUnavailable
from match.store import Record, open_store
from match.store.elasticsearch import WORD_FIELDS, ElasticsearchStore, document_id, index_body, template_name
from tests.store.test_contract import random_features

pytestmark = pytest.mark.elasticsearch

MakeStore = Callable[..., ElasticsearchStore]


def es(url: str, method: str, path: str, body: Any = None, ok404: bool = False) -> Any:
    """One raw JSON request to Elasticsearch."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        if ok404 and exc.code == 404:
            return None
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc


def random_signature(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2, 3, sig.SIGNATURE_LENGTH).astype(np.int8)


@pytest.fixture
def index_name(es_url: str) -> Iterator[str]:
    """A fresh index name, deleted after the test."""
    name = f"match-test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_index(es_url, name)


@pytest.fixture
def make_es(es_url: str, index_name: str, tmp_path: Path) -> Iterator[MakeStore]:
    """Stores on the test node over ``index_name`` (settings as match.config builds them)."""
    opened: list[ElasticsearchStore] = []

    def make(**extra: Any) -> ElasticsearchStore:
        settings = {"MATCH_STORE": "elasticsearch", "ELASTICSEARCH_URL": es_url,
                    "MATCH_INDEX": index_name, "MATCH_DATA_DIR": str(tmp_path), **extra}
        store = open_store(match_config.load(settings, environ={}))
        assert isinstance(store, ElasticsearchStore)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


# --- the mapping ----------------------------------------------------------------------


def test_mapping_created_at_startup(make_es: MakeStore, es_url: str, index_name: str) -> None:
    make_es()
    body = es(es_url, "GET", f"/{index_name}")[index_name]
    mapping = body["mappings"]
    assert mapping["dynamic"] == "strict"
    fields = mapping["properties"]
    assert fields["filepath"] == {"type": "keyword"}
    assert fields["signature"]["type"] == "binary"
    vector = fields["vector"]
    assert (vector["type"], vector["element_type"], vector["dims"], vector["similarity"]) == \
        ("dense_vector", "byte", 648, "l2_norm")
    assert all(fields[name]["type"] == "keyword" for name in WORD_FIELDS)
    assert fields["metadata"] == {"type": "object", "enabled": False}
    assert fields["sha256"]["type"] == "keyword"
    assert fields["added_at"]["type"] == "date"
    assert body["settings"]["index"]["number_of_shards"] == "1"


def test_concurrent_startup_creates_the_index_once(make_es: MakeStore, es_url: str,
                                                   index_name: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            make_es().check()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert es(es_url, "GET", f"/{index_name}/_mapping")[index_name]["mappings"]["dynamic"] == "strict"


def test_incompatible_index_is_refused_with_a_clear_message(make_es: MakeStore, es_url: str,
                                                            index_name: str) -> None:
    body = index_body(replicas=0)
    body["mappings"]["properties"]["filepath"] = {"type": "text"}
    del body["mappings"]["properties"]["vector"]
    es(es_url, "PUT", f"/{index_name}", body)
    with pytest.raises(IncompatibleIndex) as caught:
        make_es()
    message = caught.value.message
    assert index_name in message
    assert "'filepath' has type 'text', expected 'keyword'" in message
    assert "'vector' is missing" in message
    assert "MATCH_INDEX" in message


def test_foreign_index_with_dynamic_mapping_is_refused(make_es: MakeStore, es_url: str,
                                                       index_name: str) -> None:
    # An index some other tool made by indexing a document (image-match's layout).
    es(es_url, "PUT", f"/{index_name}/_doc/1?refresh=true",
       {"path": "a.jpg", "signature": [0, 1, -1], "simple_word_0": 42})
    with pytest.raises(IncompatibleIndex, match="'filepath' is missing"):
        make_es()


# --- ids, overwrite, concurrency ---------------------------------------------------------


def test_overwrite_is_one_document_with_an_id_from_the_filepath(make_es: MakeStore, es_url: str,
                                                                index_name: str) -> None:
    store = make_es()
    filepath = "photos/" + "x" * 900 + ".jpg"  # longer than Elasticsearch's 512-byte ids
    store.upsert(Record(filepath, random_signature(1), {"v": 1}))
    store.upsert(Record(filepath, random_signature(2), {"v": 2}))
    assert store.count() == 1
    doc = es(es_url, "GET", f"/{index_name}/_doc/{document_id(filepath)}")
    assert doc["_source"]["filepath"] == filepath
    assert doc["_source"]["metadata"] == {"v": 2}
    assert doc["_version"] == 2


def test_concurrent_upserts_of_one_filepath_leave_one_document(make_es: MakeStore) -> None:
    store = make_es()
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            barrier.wait()
            store.upsert(Record("same.jpg", random_signature(i), {"writer": i}))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 1
    assert store.list() == ["same.jpg"]
    record = store.get("same.jpg")
    assert record is not None
    writer = record.metadata["writer"]
    assert np.array_equal(record.signature, random_signature(writer))


def test_metadata_cannot_explode_the_mapping(make_es: MakeStore, es_url: str, index_name: str) -> None:
    store = make_es()
    before = es(es_url, "GET", f"/{index_name}/_mapping")
    wide = {f"key_{i}": {"value": i, "tags": [f"t{i}"]} for i in range(1000)}
    deep: dict[str, Any] = {"leaf": "bottom"}
    for depth in range(200):
        deep = {f"level_{depth}": deep}
    store.upsert(Record("wide.jpg", random_signature(1), wide))
    store.upsert(Record("deep.jpg", random_signature(2), deep))
    store.upsert_many(Record(f"many/{i}.jpg", random_signature(i), {f"unique_{i}_{j}": j for j in range(50)})
                      for i in range(20))
    assert es(es_url, "GET", f"/{index_name}/_mapping") == before
    wide_record = store.get("wide.jpg")
    deep_record = store.get("deep.jpg")
    assert wide_record is not None and dict(wide_record.metadata) == wide
    assert deep_record is not None and dict(deep_record.metadata) == deep
    assert store.count() == 22


# --- bulk ----------------------------------------------------------------------------


def test_bulk_is_searchable_when_it_returns(make_es: MakeStore) -> None:
    store = make_es(MATCH_ES_REFRESH="wait_for")
    records = [Record(f"bulk/{i:04d}.jpg", random_signature(i)) for i in range(1200)]
    assert store.upsert_many(records) == 1200
    assert store.count() == 1200
    assert [m.filepath for m in store.search(records[777].signature, size=1)] == ["bulk/0777.jpg"]


def test_bulk_item_failures_name_the_filepaths(make_es: MakeStore, es_url: str, index_name: str) -> None:
    store = make_es()
    store.upsert(Record("before.jpg", random_signature(0)))
    # A write block makes every bulk item fail on the server side.
    es(es_url, "PUT", f"/{index_name}/_settings", {"index.blocks.write": True})
    try:
        with pytest.raises(StoreError) as caught:
            store.upsert_many([Record("one.jpg", random_signature(1)),
                               Record("two.jpg", random_signature(2))])
    finally:
        es(es_url, "PUT", f"/{index_name}/_settings", {"index.blocks.write": None})
    assert "did not write 2 of 2 records" in caught.value.message
    assert "one.jpg" in caught.value.message and "two.jpg" in caught.value.message
    assert store.list() == ["before.jpg"]


# --- list ----------------------------------------------------------------------------


@pytest.mark.slow
def test_list_pages_past_ten_thousand(make_es: MakeStore) -> None:
    store = make_es(MATCH_ES_REFRESH="false")
    rng = np.random.default_rng(7)
    names = [f"deep/{i:05d}.jpg" for i in range(10_050)]
    signatures = rng.integers(-2, 3, (len(names), sig.SIGNATURE_LENGTH)).astype(np.int8)
    order = rng.permutation(len(names))  # inserted out of order
    store.upsert_many(Record(names[i], signatures[i]) for i in order)
    store.refresh = "wait_for"
    store.upsert(Record(names[0], signatures[0]))  # makes the bulk visible too
    assert store.count() == 10_050
    assert store.list(0, 5) == names[:5]
    assert store.list(9_990, 20) == names[9_990:10_010]
    assert store.list(10_000, 50) == names[10_000:]
    assert store.list(10_040, 100) == names[10_040:]
    assert store.list(10_050, 10) == []
    assert store.list(25, 10_000) == names[25:10_025]


# --- search --------------------------------------------------------------------------


def test_search_finds_every_orientation(make_es: MakeStore, photo_paths: list[Path]) -> None:
    store = make_es()
    pixels = np.asarray(Image.open(photo_paths[0]).convert("RGB").reduce(4))
    views = sig.symmetries(pixels)
    store.upsert_many(Record(f"view-{i}.jpg", sig.generate(np.ascontiguousarray(view)))
                      for i, view in enumerate(views))
    for i in range(10):
        store.upsert(Record(f"other-{i}.jpg", sig.generate(
            np.asarray(Image.open(photo_paths[i + 1]).convert("RGB").reduce(4)))))
    matches = store.search(sig.generate_all(pixels), size=20)
    found = {m.filepath: m.distance for m in matches}
    assert {f"view-{i}.jpg" for i in range(8)} <= set(found)
    assert all(found[f"view-{i}.jpg"] == 0.0 for i in range(8))
    # A single orientation alone finds the stored views equal to it only.
    alone = store.search(sig.generate(pixels), size=20, cutoff=0.05)
    assert [m.filepath for m in alone] == ["view-0.jpg"]


def no_shared_word_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two signatures within the cutoff that share none of their 63 words.

    Each word reads the signs of 16 consecutive values; nudging one value per word
    from 0 to 1 (or from +-1 to 0) changes that word and moves the signature a little,
    as in rhsimplex/image-match#64 (a pair at distance 0.31 words never retrieve).
    """
    rng = np.random.default_rng(seed)
    base = rng.choice(np.array([-2, -1, 0, 1, 2], dtype=np.int8), sig.SIGNATURE_LENGTH,
                      p=[0.15, 0.2, 0.3, 0.2, 0.15])
    near = base.copy()
    starts = np.linspace(0, sig.SIGNATURE_LENGTH, sig.N_WORDS, endpoint=False).astype(int)
    for start in starts:
        window = range(start, min(start + sig.WORD_LENGTH, sig.SIGNATURE_LENGTH))
        position = next((p for p in window if abs(base[p]) <= 1), start)
        near[position] = 1 if base[position] == 0 else 0
    return base, near


def test_knn_retrieves_a_close_pair_that_shares_no_word(make_es: MakeStore) -> None:
    base, near = no_shared_word_pair(3)
    assert not np.any(sig.words(base) == sig.words(near))
    distance = sig.distance(base, near)
    assert distance <= sig.DEFAULT_CUTOFF
    store = make_es()
    # Distractors that do share words with the query, so the word search is busy.
    rng = np.random.default_rng(4)
    distractors = []
    for i in range(300):
        other = rng.integers(-2, 3, sig.SIGNATURE_LENGTH).astype(np.int8)
        other[:40] = near[:40]
        distractors.append(Record(f"distractor-{i:03d}.jpg", other))
    store.upsert_many([Record("target.jpg", base), *distractors])

    store.knn = False
    assert "target.jpg" not in [m.filepath for m in store.search(near, size=50)]
    store.knn = True
    matches = store.search(near, size=50)
    assert matches[0].filepath == "target.jpg"
    assert matches[0].distance == pytest.approx(distance)


@pytest.mark.slow
def test_recall_on_edited_photos(make_es: MakeStore, photo_paths: list[Path]) -> None:
    """A small bench/es_recall.py: 500 edited photos, every pair under the cutoff found."""
    from bench.es_recall import build_signatures, ground_truth, recall

    signatures = build_signatures(photo_paths, 500, cache=None)
    queries = np.arange(0, 500, 5)
    truth = ground_truth(signatures, queries, sig.DEFAULT_CUTOFF)
    store = make_es()
    store.upsert_many(Record(f"img/{i:06d}.jpg", s) for i, s in enumerate(signatures))
    store.knn = False
    words_alone, pairs, _ = recall(store, signatures, queries, truth, sig.DEFAULT_CUTOFF)
    store.knn = True
    with_knn, _, _ = recall(store, signatures, queries, truth, sig.DEFAULT_CUTOFF)
    assert pairs > 200
    assert with_knn >= 0.995
    assert with_knn >= words_alone


# --- failure -------------------------------------------------------------------------


def test_an_index_deleted_while_match_runs_comes_back_with_its_mapping(make_es: MakeStore, es_url: str,
                                                                      index_name: str) -> None:
    store = make_es()
    store.upsert(Record("a.jpg", random_signature(1)))
    template = es(es_url, "GET", f"/_index_template/{template_name(index_name)}")
    (entry,) = template["index_templates"]
    assert entry["index_template"]["index_patterns"] == [index_name]
    # How match users reset an index. Elasticsearch recreates it on the next write,
    # from match's template: not with a dynamic mapping on which every search fails.
    es(es_url, "DELETE", f"/{index_name}")
    store.upsert(Record("b.jpg", random_signature(2)))
    mappings = es(es_url, "GET", f"/{index_name}/_mapping")[index_name]["mappings"]
    assert mappings["dynamic"] == "strict"
    assert mappings["properties"]["vector"]["type"] == "dense_vector"
    assert [m.filepath for m in store.search(random_signature(2))] == ["b.jpg"]
    assert store.search(random_signature(1)) == []
    assert store.count() == 1


def test_an_index_replaced_under_match_is_named_on_the_next_call(make_es: MakeStore, es_url: str,
                                                                index_name: str) -> None:
    store = make_es()
    store.upsert(Record("a.jpg", random_signature(1)))
    es(es_url, "DELETE", f"/_index_template/{template_name(index_name)}")
    es(es_url, "DELETE", f"/{index_name}")
    es(es_url, "PUT", f"/{index_name}", {"mappings": {"properties": {"vector": {"type": "float"}}}})
    with pytest.raises(StoreError):
        store.search(random_signature(1))
    with pytest.raises(IncompatibleIndex, match="vector"):
        store.search(random_signature(1))


def test_deleting_a_missing_filepath_does_not_wait_for_a_refresh(make_es: MakeStore, es_url: str,
                                                                 index_name: str) -> None:
    store = make_es(MATCH_ES_TIMEOUT=2.0)
    store.upsert(Record("a.jpg", random_signature(1)))
    # With refreshes 60 s apart, a delete waiting for one would time out (503).
    es(es_url, "PUT", f"/{index_name}/_settings", {"index": {"refresh_interval": "60s"}})
    assert store.delete("missing.jpg") is False
    es(es_url, "PUT", f"/{index_name}/_settings", {"index": {"refresh_interval": "1s"}})
    assert store.delete("a.jpg") is True
    assert store.search(random_signature(1)) == []


def test_closed_port_is_unavailable_within_the_timeout(make_es: MakeStore) -> None:
    timeout = 1.0
    started = time.monotonic()
    store = make_es(ELASTICSEARCH_URL=f"http://127.0.0.1:{free_port()}", MATCH_ES_TIMEOUT=timeout)
    assert time.monotonic() - started < 3 * timeout  # from_config logs and returns
    calls: dict[str, Callable[[], object]] = {
        "check": store.check,
        "upsert": lambda: store.upsert(Record("a.jpg", random_signature(1))),
        "upsert_many": lambda: store.upsert_many([Record("a.jpg", random_signature(1)),
                                                  Record("b.jpg", random_signature(2))]),
        "get": lambda: store.get("a.jpg"),
        "delete": lambda: store.delete("a.jpg"),
        "search": lambda: store.search(random_signature(1)),
        "count": store.count,
        "list": store.list,
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not answer") as caught:
            call()
        assert time.monotonic() - started < 3 * timeout, name
        assert caught.value.status == 503


class Relay:
    """A loopback TCP relay to ``target`` that can be switched off (refusing and
    cutting connections) and on again: an outage of "the cluster" as a client sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def off(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            server, self._server = self._server, None
        for sock in [*sockets, *([server] if server else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_store_recovers_when_elasticsearch_comes_back(make_es: MakeStore, es_url: str,
                                                      index_name: str) -> None:
    host, port = es_url.removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    # Startup while "Elasticsearch" is down: no crash, check() says why.
    store = make_es(ELASTICSEARCH_URL=relay.url, MATCH_ES_TIMEOUT=3.0)
    with pytest.raises(StoreUnavailable, match="did not answer"):
        store.check()
    assert es(es_url, "GET", f"/{index_name}", ok404=True) is None
    relay.on()
    try:
        store.check()  # the index is created lazily, now
        store.upsert(Record("a.jpg", random_signature(1)))
        relay.off()
        with pytest.raises(StoreUnavailable):
            store.search(random_signature(1))
        with pytest.raises(StoreUnavailable):
            store.upsert(Record("b.jpg", random_signature(2)))
        relay.on()
        store.upsert(Record("b.jpg", random_signature(2)))
        assert [m.filepath for m in store.search(random_signature(1))] == ["a.jpg"]
        assert store.list() == ["a.jpg", "b.jpg"]
    finally:
        relay.off()


#: The msearch item Elasticsearch 9.5 answered in tests/store/test_es_cluster.py when the
#: node holding a search's context shut down between the query and fetch phases.
CONTEXT_MISSING = {
    "status": 404,
    "error": {
        "root_cause": [{"type": "search_context_missing_exception",
                        "reason": "No search context found for id [[JAl6rQRMSt6jdppfzLG5BQ][29] "
                                  "searcherId [null]]"}],
        "type": "search_phase_execution_exception", "reason": "all shards failed",
        "phase": "fetch", "grouped": True,
        "failed_shards": [{"shard": 0, "index": "images", "node": "JAl6rQRMSt6jdppfzLG5BQ",
                           "reason": {"type": "search_context_missing_exception",
                                      "reason": "No search context found for id [[JAl6rQRMSt6jdppfzLG5BQ]"
                                                "[29] searcherId [null]]"}}],
    },
}


@contextlib.contextmanager
def failing_msearch(es_url: str, failures: int) -> Iterator[tuple[str, list[int]]]:
    """An HTTP proxy to the real node whose first ``failures`` ``_msearch`` calls answer
    every item with :data:`CONTEXT_MISSING` (what a failover looks like to a client).
    Yields the proxy's URL and a list counting the msearch calls it saw."""
    seen: list[int] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?")[0].endswith("/_msearch"):
                seen.append(1)
                if len(seen) <= failures:
                    items = body.decode().strip().count("\n") // 2 + 1
                    self.reply(200, {"took": 1, "responses": [CONTEXT_MISSING] * items})
                    return
            headers = {name: value for name, value in self.headers.items()
                       if name.lower() in ("content-type", "accept")}
            request = urllib.request.Request(f"{es_url}{self.path}", data=body or None,
                                             method=self.command, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    self.reply(response.status, json.loads(response.read() or b"null"))
            except urllib.error.HTTPError as exc:
                self.reply(exc.code, json.loads(exc.read() or b"null"))

        def reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.elasticsearch+json; compatible-with=9")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_search_cut_by_a_failover_is_retried(make_es: MakeStore, es_url: str) -> None:
    writer = make_es()
    writer.upsert(Record("a.jpg", random_signature(1)))
    with failing_msearch(es_url, failures=1) as (url, seen):
        store = make_es(ELASTICSEARCH_URL=url)
        assert [m.filepath for m in store.search(random_signature(1))] == ["a.jpg"]
    assert len(seen) == 2


def test_a_search_failing_through_the_retry_is_unavailable_not_an_error(make_es: MakeStore,
                                                                       es_url: str) -> None:
    writer = make_es()
    writer.upsert(Record("a.jpg", random_signature(1)))
    with failing_msearch(es_url, failures=2) as (url, seen):
        store = make_es(ELASTICSEARCH_URL=url)
        with pytest.raises(StoreUnavailable, match="search_context_missing_exception") as caught:
            store.search(random_signature(1))
    assert caught.value.status == 503
    assert len(seen) == 2


# --- local features (issue 10) ------------------------------------------------------


def old_index_body() -> dict[str, Any]:
    """The mapping the release before local features created (copied, not derived)."""
    return {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s"},
        "mappings": {
            "dynamic": "strict",
            "_source": {"excludes": ["vector", "word_*"]},
            "properties": {
                "filepath": {"type": "keyword"},
                "signature": {"type": "binary"},
                "vector": {"type": "dense_vector", "element_type": "byte", "dims": 648, "index": True,
                           "similarity": "l2_norm", "index_options": {"type": "hnsw"}},
                **{f"word_{i}": {"type": "keyword", "doc_values": False} for i in range(63)},
                "metadata": {"type": "object", "enabled": False},
                "sha256": {"type": "keyword", "doc_values": False},
                "added_at": {"type": "date", "format": "epoch_second"},
            },
        },
    }


def old_document(filepath: str, signature: np.ndarray) -> dict[str, Any]:
    """A document as the release before local features wrote it."""
    document: dict[str, Any] = {"filepath": filepath,
                                "signature": base64.b64encode(signature.tobytes()).decode("ascii"),
                                "vector": signature.tolist(), "metadata": {"old": True},
                                "sha256": None, "added_at": 1_700_000_000}
    document.update({name: str(int(word)) for name, word in zip(WORD_FIELDS, sig.words(signature),
                                                                   strict=True)})
    return document


def test_an_index_from_before_local_features_is_upgraded_in_place(make_es: MakeStore, es_url: str,
                                                                  index_name: str) -> None:
    es(es_url, "PUT", f"/{index_name}", old_index_body())
    signatures = {f"old-{i}.jpg": random_signature(100 + i) for i in range(5)}
    for filepath, signature in signatures.items():
        es(es_url, "PUT", f"/{index_name}/_doc/{document_id(filepath)}?refresh=true",
           old_document(filepath, signature))

    store = make_es()
    fields = es(es_url, "GET", f"/{index_name}/_mapping")[index_name]["mappings"]["properties"]
    assert fields["words"]["type"] == "keyword"
    assert fields["features"] == {"type": "binary", "store": True}
    assert fields["keypoints"]["type"] == "integer"
    template = es(es_url, "GET", f"/_index_template/{template_name(index_name)}")["index_templates"][0]
    assert "features" in template["index_template"]["template"]["mappings"]["properties"]

    # The old records: found by signature, read back without features, counted as missing.
    hits = store.search(signatures["old-2.jpg"])
    assert hits and hits[0].filepath == "old-2.jpg" and hits[0].metadata == {"old": True}
    record = store.get("old-2.jpg")
    assert record is not None and record.features is None
    assert store.get_features(list(signatures)) == {}
    assert store.missing_features() == 5 and store.count() == 5

    # Backfill one (as match reindex does) and add a new one: both have words and features.
    features = random_features(7)
    store.upsert(Record("old-2.jpg", signatures["old-2.jpg"], {"old": True}, features=features))
    store.upsert(Record("new.jpg", random_signature(200), features=random_features(8)))
    assert store.missing_features() == 4 and store.count() == 6
    words = Record("x", random_signature(0), features=features).words
    assert store.search_words(words, size=1)[0].filepath == "old-2.jpg"
    found = store.get_features(["old-2.jpg", "old-3.jpg", "new.jpg"])
    assert set(found) == {"old-2.jpg", "new.jpg"}
    assert np.array_equal(found["old-2.jpg"].descriptors, features.descriptors)

    # A second process opening the upgraded index changes nothing.
    before = es(es_url, "GET", f"/{index_name}/_mapping")
    make_es().check()
    assert es(es_url, "GET", f"/{index_name}/_mapping") == before


@pytest.mark.parametrize(("field", "spec", "problem"), [
    ("features", {"type": "binary"}, "'features' has store False, expected True"),
    ("words", {"type": "text"}, "'words' has type 'text', expected 'keyword'"),
    ("keypoints", {"type": "keyword"}, "'keypoints' has type 'keyword', expected 'integer'"),
])
def test_feature_fields_mapped_otherwise_are_refused(make_es: MakeStore, es_url: str, index_name: str,
                                                     field: str, spec: dict[str, Any], problem: str) -> None:
    body = index_body(replicas=0)
    body["mappings"]["properties"][field] = spec
    es(es_url, "PUT", f"/{index_name}", body)
    with pytest.raises(IncompatibleIndex) as caught:
        make_es()
    assert problem in caught.value.message


def test_new_index_keeps_features_out_of_source(make_es: MakeStore, es_url: str, index_name: str) -> None:
    store = make_es()
    store.upsert(Record("a.jpg", random_signature(1), {"k": 1}, features=random_features(1)))
    source = es(es_url, "GET", f"/{index_name}/_doc/{document_id('a.jpg')}")["_source"]
    assert "features" not in source and "words" not in source
    assert source["keypoints"] == 100 and source["metadata"] == {"k": 1}


def test_word_search_past_the_clause_cap_is_chunked(make_es: MakeStore) -> None:
    store = make_es()
    records = [Record(f"f{seed}.jpg", random_signature(seed), features=random_features(seed))
               for seed in range(8)]
    store.upsert_many(records)
    target = records[5].words
    # Every word of the vocabulary: more clauses than an Elasticsearch node takes (16,384
    # on a 1 GB heap); the store learns the cap from the refusal and sends chunks.
    everything = store.search_words(np.arange(65_536), size=8)
    assert store._max_clauses is not None and store._max_clauses < 65_536
    assert {hit.filepath for hit in everything} == {record.filepath for record in records}

    # Chunked scores are the sums of the chunks: the same as one query's.
    whole = store.search_words(target, size=8)
    assert whole[0].filepath == "f5.jpg"
    store._max_clauses = 7
    chunked = store.search_words(target, size=8)
    assert [hit.filepath for hit in chunked] == [hit.filepath for hit in whole]
    assert np.allclose([hit.score for hit in chunked], [hit.score for hit in whole], rtol=1e-4)


def test_signature_search_does_not_fetch_features(make_es: MakeStore) -> None:
    store = make_es()
    store.upsert(Record("a.jpg", random_signature(3), features=random_features(3)))
    requests: list[dict[str, Any]] = []
    msearch = store._client.msearch

    def spy(**kwargs: Any) -> Any:
        requests.append(kwargs)
        return msearch(**kwargs)

    store._client.msearch = spy  # type: ignore[method-assign]
    assert store.search(random_signature(3))[0].filepath == "a.jpg"
    bodies = [body for body in requests[0]["searches"] if "index" not in body]
    assert bodies and all("features" not in body["_source"] and "stored_fields" not in body
                          for body in bodies)

