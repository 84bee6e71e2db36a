"""Search latency at scale on Elasticsearch: match's query vs TRUEPIC/match's, same index.

Not a test (tests/test_bench_smoke.py only runs ``--smoke``). It needs a running
Elasticsearch; use a node of your own for the 1M run (it takes a while)::

    ES_PORT=9250 ES_HEAP=4g scripts/elasticsearch.sh start
    python -m bench.es_scale --url http://127.0.0.1:9250 --sizes 10000 100000 1000000

The index grows: the corpus (:func:`bench.common.scale_signatures`, edited real
photos) is bulk-loaded with :meth:`ElasticsearchStore.upsert_many` up to each size
in turn, and at each size the searches below are timed, interleaved query by query
(so a busy machine slows them alike). Queries are *new* edits of the photos (not in
the index), signed in their 8 orientations (:func:`match.signature.generate_all`).

Contenders (each includes the Python client round trips and the rerank):

* ``match 1``: ``store.search(one signature)``: one ``_msearch`` with the 63-word
  ``bool`` and the kNN search, reranked with the exact distance.
* ``match 8``: ``store.search(8 signatures)``: one ``_msearch`` of 16 searches.
* ``match words 1`` / ``match words 8``: the same without kNN (``MATCH_ES_KNN=false``).
* ``combined 8`` (a proposal, not what match does yet): all 8 orientations in 2
  searches instead of 16 -- one ``bool`` of 63 ``terms`` queries (word field *i*
  matches any of the 8 orientations' word *i*) and one search with 8 ``knn`` clauses
  (one per orientation, ``k`` = candidates each; Elasticsearch returns the best
  ``candidates`` hits of their union by score) -- then the same exact rerank
  (:func:`combined_search`).
* ``combined 8, kNN 1``: the same with the kNN clause for the image as given only
  (a rotated or mirrored copy has nearly the signature of one of the 8 orientations,
  which its words find; kNN is there for edits that share no word).
* ``anchor 1`` / ``anchor 8``: TRUEPIC/match's query, as image-match 1.1.2's
  ``SignatureES.search_single_record`` builds it: per orientation, one ``_search``
  of a ``bool`` ``should`` of 63 ``term`` queries (no ``minimum_should_match``, no
  ``track_total_hits`` setting), ``size`` 100, ``_source`` without the words, then the
  distance to each hit in Python; the 8 orientations one request after another, in
  series. It runs against the same index (the word fields are ``word_0..62``
  instead of ``simple_word_0..62``, and the signature is read from the base64
  field instead of a JSON list of 648 numbers, which only makes the anchor faster).

Results are printed as a Markdown table and appended as JSON lines to
``bench/results/es_scale.jsonl`` (``bench/plot.py`` draws them).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch

from bench import common
from match import signature as sig
from match.store.base import Record
from match.store.elasticsearch import WORD_FIELDS, ElasticsearchStore, index_body

#: contender -> query number -> distance of its best hit (for recall against exhaustive).
TOP1: dict[str, dict[int, float]] = {}


def exhaustive_top1(signatures: np.ndarray, queries: list[np.ndarray], n: int,
                    cutoff: float = sig.DEFAULT_CUTOFF, chunk: int = 100_000) -> dict[int, float]:
    """Query number -> distance of the nearest of the first ``n`` signatures (any
    orientation) when it is within ``cutoff``: what an exhaustive scan answers (a
    contender is right when its best hit is that near: ties count as right)."""
    stacked = np.concatenate(queries)  # (8 * queries, 648)
    best = np.full(len(queries), np.inf)
    for start in range(0, n, chunk):
        block = np.asarray(signatures[start:min(n, start + chunk)])
        distances = sig.distances(stacked, block).reshape(len(queries), -1, len(block)).min(axis=1)
        best = np.minimum(best, distances.min(axis=1))
    return {q: float(best[q]) for q in range(len(queries)) if best[q] <= cutoff}


HEADER = ["N", "contender", "p50 ms", "p99 ms", "queries/s (1 client)", "CPU ms/query",
          "of which client CPU ms"]


def anchor_search(client: Elasticsearch, index: str, queries: np.ndarray, size: int = 100,
                  cutoff: float = sig.DEFAULT_CUTOFF) -> list[tuple[str, float]]:
    """TRUEPIC/match's (image-match 1.1.2's) search: one request per orientation, in series."""
    found: dict[str, tuple[str, float]] = {}
    for query in queries:
        words = sig.words(query)
        should = [{"term": {name: str(int(word))}} for name, word in zip(WORD_FIELDS, words, strict=True)]
        hits = client.search(index=index, query={"bool": {"should": should}}, size=size,
                             source_excludes=["word_*"], timeout="10s")["hits"]["hits"]
        if not hits:
            continue
        signatures = np.stack([np.frombuffer(base64.b64decode(h["_source"]["signature"]), np.int8)
                               for h in hits])
        distances = sig.distances(query, signatures)
        for hit, distance in zip(hits, distances.tolist(), strict=True):
            if distance < cutoff and hit["_id"] not in found:
                found[hit["_id"]] = (hit["_source"]["filepath"], distance)
    return sorted(found.values(), key=lambda item: item[1])


def combined_search(client: Elasticsearch, index: str, queries: np.ndarray, candidates: int = 100,
                    size: int = 10, cutoff: float = sig.DEFAULT_CUTOFF,
                    knn_orientations: int = 8) -> list[tuple[str, float]]:
    """All orientations in one ``_msearch`` of 2 searches (see the module docstring);
    kNN for the first ``knn_orientations`` orientations only."""
    words = sig.words(queries)  # (k, 63)
    source = ["filepath", "signature", "metadata"]
    should = [{"terms": {name: sorted({str(int(word)) for word in words[:, i]})}}
              for i, name in enumerate(WORD_FIELDS)]
    searches = [
        {"index": index},
        {"size": candidates, "_source": source, "track_total_hits": False,
         "query": {"bool": {"should": should, "minimum_should_match": 1}}},
        {"index": index},
        {"size": candidates, "_source": source,
         "knn": [{"field": "vector", "query_vector": query.tolist(), "k": candidates,
                  "num_candidates": 2 * candidates} for query in queries[:knn_orientations]]},
    ]
    response = client.msearch(searches=searches,
                              filter_path="responses.hits.hits._id,responses.hits.hits._source")
    sources = {hit["_id"]: hit["_source"] for result in response["responses"]
               for hit in result.get("hits", {}).get("hits", [])}
    if not sources:
        return []
    found = list(sources.values())
    matrix = np.stack([np.frombuffer(base64.b64decode(s["signature"]), np.int8) for s in found])
    distances = sig.distances(queries, matrix).min(axis=0)
    ranked = sorted(zip([s["filepath"] for s in found], distances.tolist(), strict=True),
                    key=lambda item: item[1])
    return [item for item in ranked if item[1] <= cutoff][:size]


def create_index(client: Elasticsearch, index: str) -> None:
    """A fresh index with match's mapping, no replica, no refresh while loading."""
    client.indices.delete(index=index, ignore_unavailable=True)
    client.indices.create(index=index, **index_body(replicas=0, refresh_interval="-1"))


def load(store: ElasticsearchStore, signatures: np.ndarray, start: int, stop: int,
         chunk: int = 20_000, deadline: float = float("inf")) -> tuple[int, float]:
    """Bulk-load rows [start, stop) through upsert_many, until ``deadline`` (epoch
    seconds) at the latest; returns (rows loaded up to, records per second)."""
    started = time.perf_counter()
    end = start
    for offset in range(start, stop, chunk):
        if time.time() > deadline:
            print(f"    deadline reached: stopping at {offset:,}", flush=True)
            break
        end = min(stop, offset + chunk)
        store.upsert_many(Record(f"img/{i:07d}.jpg", np.asarray(signatures[i]), {"n": i})
                          for i in range(offset, end))
        rate = (end - start) / (time.perf_counter() - started)
        print(f"    loaded {end:,} ({rate:,.0f} records/s)", flush=True)
    return end, (end - start) / max(time.perf_counter() - started, 1e-9)


Timings = tuple[dict[str, list[float]], dict[str, float], dict[str, float]]


def measure(url: str, index: str, queries: list[np.ndarray], candidates: int,
            only: list[str] | None = None) -> Timings:
    """Latency (ms) of every contender for every query, interleaved, and each one's
    mean CPU ms per query: this process plus the Elasticsearch node when it runs on
    this machine (a figure a busy machine does not inflate as it does latency), and the
    part of it spent in this process (client, JSON, rerank)."""
    match = ElasticsearchStore([url], index=index, replicas=0, timeout=60, candidates=candidates,
                               num_candidates=2 * candidates)
    words = ElasticsearchStore([url], index=index, replicas=0, timeout=60, candidates=candidates,
                               num_candidates=2 * candidates, knn=False)
    client = Elasticsearch(url, request_timeout=60)
    contenders = {
        "match 1": lambda q: match.search(q[:1]),
        "match 8": lambda q: match.search(q),
        "match words 1": lambda q: words.search(q[:1]),
        "match words 8": lambda q: words.search(q),
        "combined 8": lambda q: combined_search(client, index, q, candidates),
        "combined 8, kNN 1": lambda q: combined_search(client, index, q, candidates, knn_orientations=1),
        "anchor 1": lambda q: anchor_search(client, index, q[:1]),
        "anchor 8": lambda q: anchor_search(client, index, q),
    }
    if only:
        contenders = {name: function for name, function in contenders.items() if name in only}
    for query in queries[:3]:  # warm-up: caches, JIT, connections
        for function in contenders.values():
            function(query)
    latencies: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, float] = dict.fromkeys(contenders, 0.0)
    client_cpu_total: dict[str, float] = dict.fromkeys(contenders, 0.0)
    node = common.es_pid(url)
    for number, query in enumerate(queries):
        for name, function in contenders.items():
            started, client_cpu = time.perf_counter(), time.process_time()
            node_cpu = common.cpu_seconds(node) if node else 0.0
            found = function(query)
            if found:
                first = found[0]
                TOP1.setdefault(name, {})[number] = first.distance if hasattr(first, "distance") else first[1]
            latencies[name].append((time.perf_counter() - started) * 1000)
            mine = time.process_time() - client_cpu
            client_cpu_total[name] += mine * 1000
            cpu[name] += (mine + (common.cpu_seconds(node) - node_cpu if node else 0.0)) * 1000
    match.close()
    words.close()
    client.close()
    return (latencies, {name: total / len(queries) for name, total in cpu.items()},
            {name: total / len(queries) for name, total in client_cpu_total.items()})


def index_facts(client: Elasticsearch, index: str) -> dict[str, Any]:
    """Docs, store bytes per doc and segment count of the index."""
    stats = client.indices.stats(index=index, metric="store,docs,segments")["indices"][index]["primaries"]
    docs = stats["docs"]["count"]
    return {"docs": docs, "bytes_per_doc": stats["store"]["size_in_bytes"] / max(docs, 1),
            "segments": stats["segments"]["count"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--index", default="match-bench-scale")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="timed queries per size")
    parser.add_argument("--candidates", type=int, default=100, help="MATCH_ES_CANDIDATES")
    parser.add_argument("--resume", action="store_true",
                        help="keep the index's documents and load only what is missing")
    parser.add_argument("--keep", action="store_true", help="do not delete the index at the end")
    parser.add_argument("--force-merge", type=int, default=0,
                        help="force-merge to at most this many segments before timing (0: no)")
    parser.add_argument("--deadline", default="",
                        help="UTC HH:MM: stop loading then, and time the size reached")
    parser.add_argument("--recall", action="store_true",
                        help="also check each contender's best hit against an exhaustive scan")
    parser.add_argument("--contenders", nargs="+", default=None,
                        help="time only these (e.g. 'match 1' 'match 8' 'combined 8')")
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 300 images, 5 queries")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.index = [300], 5, args.index + "-smoke"

    print(f"machine: {common.machine()}")
    sizes = sorted(args.sizes)
    signatures = common.scale_signatures(sizes[-1], progress=True)
    print(f"corpus: {len(signatures):,} signatures; {common.word_stats(signatures[:100_000])}")
    queries = common.query_signatures(args.queries)
    client = Elasticsearch(args.url, request_timeout=600)
    loaded = 0
    if args.resume and client.indices.exists(index=args.index):
        client.indices.refresh(index=args.index)
        loaded = int(client.count(index=args.index)["count"])
        print(f"resuming: {loaded:,} documents already in {args.index}")
    else:
        create_index(client, args.index)
    store = ElasticsearchStore([args.url], index=args.index, replicas=0, refresh="false", timeout=600)
    deadline = float("inf")
    if args.deadline:
        hours, minutes = (int(part) for part in args.deadline.split(":"))
        now = time.gmtime()
        deadline = time.time() + ((hours - now.tm_hour) * 60 + minutes - now.tm_min) * 60 - now.tm_sec
    rows = []
    try:
        for size in sizes:
            if size > loaded:
                print(f"  loading {loaded:,} -> {size:,}", flush=True)
                reached, rate = load(store, signatures, loaded, size, deadline=deadline)
                print(f"  bulk load: {rate:,.0f} records/s", flush=True)
                if reached == loaded:
                    break
                loaded = reached
            client.indices.refresh(index=args.index)
            if args.force_merge:
                client.indices.forcemerge(index=args.index, max_num_segments=args.force_merge)
                client.indices.refresh(index=args.index)
            facts = index_facts(client, args.index)
            latencies, cpu, client_cpu = measure(args.url, args.index, queries, args.candidates,
                                                 args.contenders)
            truth = exhaustive_top1(signatures, queries, facts["docs"]) if args.recall else {}
            for name, values in latencies.items():
                stats = common.summary(values)
                if args.recall:
                    got = TOP1.get(name, {})
                    right = sum(abs(got.get(q, 2.0) - best) < 1e-9 for q, best in truth.items())
                    stats["top1_recall"] = right / max(1, len(truth))
                    print(f"    {name}: best hit = exhaustive scan's for {stats['top1_recall']:.1%} "
                          f"of {len(truth)} queries with a hit", flush=True)
                TOP1.pop(name, None)
                rows.append([f"{facts['docs']:,}", name, stats["p50"], stats["p99"], stats["qps"], cpu[name],
                             client_cpu[name]])
                with open(common.results_dir() / "es_scale.jsonl", "a") as out:
                    out.write(json.dumps({"backend": "elasticsearch", "n": facts["docs"], "contender": name,
                                          **stats, "cpu_ms": cpu[name],
                                          "client_cpu_ms": client_cpu[name], **facts, "time": time.time(),
                                          "load": os.getloadavg()[0], "smoke": args.smoke}) + "\n")
            print(common.table(rows[-len(latencies):], HEADER), flush=True)
            p50 = {name: common.summary(values)["p50"] for name, values in latencies.items()}
            ratios = [f"{a} / {b} p50 {p50[a] / p50[b]:.2f}x" for a, b in
                      (("match 8", "match 1"), ("combined 8", "match 1"), ("anchor 8", "match 8"))
                      if a in p50 and b in p50]
            print(f"  N={facts['docs']:,}: {facts['segments']} segments, {facts['bytes_per_doc']:.0f} B/doc; "
                  + "; ".join(ratios), flush=True)
    finally:
        store.close()
        if not args.keep:
            client.indices.delete(index=args.index, ignore_unavailable=True)
        client.close()
    print(common.table(rows, HEADER))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
