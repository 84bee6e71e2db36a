"""Candidate recall, size and latency of the Elasticsearch store, on edited real photos.

Not a test: it prints the figures docs/elasticsearch.md quotes. It needs a running
Elasticsearch (``scripts/elasticsearch.sh start``) and the photo corpus of
``tests/photos.py``::

    python -m bench.es_recall --images 10000 --queries 1000

What it does:

1. Builds ``--images`` images from the ~120 real photos under many edits (crops,
   resizes, JPEG quality, brightness, contrast, rotation, blur, grayscale, borders,
   text, and pairs of those), and signs each one (``match.signature.generate``).
2. Ground truth: for ``--queries`` sampled images, an exhaustive scan
   (``match.signature.distances`` against every image) lists the other images within
   the cutoff.
3. Indexes every image with :class:`ElasticsearchStore` and counts which of those
   pairs a search retrieves: with words alone, and with words + kNN.
4. Compares the word fields as ``keyword`` vs ``integer`` (bytes, word-query latency)
   and the kNN structure ``hnsw`` vs ``flat`` (kNN recall against exact, latency), and
   reports bytes per image (``_stats`` store size / docs, after a force merge, and the
   per-field split of ``_disk_usage``).

The indices it creates are named ``match-bench-*`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch, helpers
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from match import signature as sig
from match.store.base import Record
from match.store.elasticsearch import WORD_FIELDS, ElasticsearchStore, index_body

#: Long side of the photos before editing: signatures are computed on a grey image
#: of the whole picture, so this only makes the bench faster.
BASE_SIDE = 800

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    keep = rng.uniform(0.6, 0.95)
    w, h = int(width * keep), int(height * rng.uniform(keep, 1.0))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((x, y, x + w, y + h))


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.25, 1.5)
    return image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))))


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(5, 60)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.5, 1.6))


def _contrast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.6))


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.rotate(rng.uniform(-12, 12), expand=bool(rng.integers(0, 2)))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4)))


def _grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _border(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(5, max(6, image.width // 6)))
    return ImageOps.expand(image, border=size, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))


def _text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        x, y = int(rng.integers(0, image.width)), int(rng.integers(0, image.height))
        draw.text((x, y), "match " * int(rng.integers(1, 8)), fill=(255, 255, 255))
    return image


EDITS: tuple[Edit, ...] = (_crop, _resize, _jpeg, _brightness, _contrast, _rotate, _blur,
                           _grayscale, _border, _text)


def _edited(args: tuple[str, int, bool]) -> np.ndarray:
    """The signature of the photo at ``path`` after 1 or 2 random edits (or none)."""
    path, seed, edit = args
    rng = np.random.default_rng(seed)
    image = Image.open(path).convert("RGB")
    image.thumbnail((BASE_SIDE, BASE_SIDE))
    if edit:
        for _ in range(int(rng.integers(1, 3))):
            image = EDITS[int(rng.integers(0, len(EDITS)))](image, rng)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)  # as it would be uploaded
    return sig.generate(np.asarray(Image.open(buffer).convert("RGB")))


def build_signatures(photos: list[Path], count: int, cache: Path | None) -> np.ndarray:
    """``count`` signatures (int8, (count, 648)) of edited photos, cached in ``cache``."""
    if cache is not None and cache.exists():
        cached = np.load(cache)
        if len(cached) >= count:
            return cached[:count]
    # Image i is an edit of photo i % len(photos); the first copy of each is unedited.
    jobs = [(str(photos[i % len(photos)]), i, i >= len(photos)) for i in range(count)]
    with ProcessPoolExecutor() as pool:
        signatures = np.stack(list(pool.map(_edited, jobs, chunksize=32)))
    if cache is not None:
        np.save(cache, signatures)
    return signatures


def ground_truth(signatures: np.ndarray, queries: np.ndarray, cutoff: float) -> list[set[int]]:
    """For each query index, the other images within ``cutoff`` (exhaustive scan)."""
    truth = []
    for q in queries:
        distances = sig.distances(signatures[q], signatures)
        truth.append({int(i) for i in np.flatnonzero(distances <= cutoff) if i != q})
    return truth


def _name(i: int) -> str:
    return f"img/{i:06d}.jpg"


def recall(store: ElasticsearchStore, signatures: np.ndarray, queries: np.ndarray,
           truth: list[set[int]], cutoff: float) -> tuple[float, int, list[float]]:
    """(share of true pairs retrieved, pairs, per-query latencies in ms)."""
    found = total = 0
    latencies = []
    for q, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        matches = store.search(signatures[q], size=10_000, cutoff=cutoff)
        latencies.append((time.perf_counter() - started) * 1000)
        got = {int(m.filepath[4:10]) for m in matches}
        found += len(expected & got)
        total += len(expected)
    return (found / total if total else 1.0), total, latencies


def _ms(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms"


def bytes_per_image(client: Elasticsearch, index: str) -> tuple[float, dict[str, int]]:
    """(store bytes / docs after a force merge, per-field bytes from _disk_usage)."""
    client.indices.forcemerge(index=index, max_num_segments=1)
    client.indices.refresh(index=index)
    stats = client.indices.stats(index=index, metric="store,docs")["indices"][index]["primaries"]
    per_doc = stats["store"]["size_in_bytes"] / stats["docs"]["count"]
    usage = client.perform_request("POST", f"/{index}/_disk_usage", params={"run_expensive_tasks": "true"},
                                   headers={"accept": "application/json"}).body
    fields = {name: info["total_in_bytes"] for name, info in usage[index]["fields"].items()}
    return per_doc, fields


def word_index_variant(client: Elasticsearch, source: str, target: str, word_type: str) -> None:
    """Copy ``source``'s documents into ``target`` whose 63 words are ``word_type`` fields."""
    body = index_body(replicas=0)
    for name in WORD_FIELDS:
        body["mappings"]["properties"][name] = {"type": word_type, "doc_values": False}
    # _source excludes the words, so the copy recomputes them from the signature.
    client.indices.create(index=target, **body)
    actions = ({"_index": target, "_id": hit["_id"], "_source": _with_words(hit["_source"])}
               for hit in helpers.scan(client, index=source, _source_includes=["*"]))
    helpers.bulk(client, actions, chunk_size=500)
    client.indices.refresh(index=target)


def _with_words(source: dict[str, Any]) -> dict[str, Any]:
    import base64

    signature = np.frombuffer(base64.b64decode(source["signature"]), dtype=np.int8)
    words = sig.words(signature)
    return {**source, "vector": signature.tolist(),
            **{name: int(word) for name, word in zip(WORD_FIELDS, words, strict=True)}}


def word_query_latency(client: Elasticsearch, index: str, signatures: np.ndarray,
                       queries: np.ndarray) -> list[float]:
    """Latency of 8-search word-only _msearch calls (ms), as one orientation set each."""
    latencies = []
    for start in range(0, len(queries) - 7, 8):
        searches: list[dict[str, Any]] = []
        for q in queries[start:start + 8]:
            words = sig.words(signatures[q])
            searches += [{"index": index}, {
                "size": 100, "_source": ["filepath", "signature"], "track_total_hits": False,
                "query": {"bool": {"should": [{"term": {name: int(word)}} for name, word in
                                              zip(WORD_FIELDS, words, strict=True)],
                                   "minimum_should_match": 1}}}]
        started = time.perf_counter()
        client.msearch(searches=searches)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def knn_quality(client: Elasticsearch, index: str, signatures: np.ndarray, queries: np.ndarray,
                k: int, num_candidates: int) -> tuple[float, list[float]]:
    """(recall@k of kNN against the exact l2 top k, latencies in ms)."""
    hits = total = 0
    latencies = []
    for q in queries:
        exact = np.argsort(np.linalg.norm(signatures.astype(np.float32) - signatures[q], axis=1),
                           kind="stable")[:k]
        started = time.perf_counter()
        response = client.search(index=index, knn={"field": "vector", "query_vector": signatures[q].tolist(),
                                                   "k": k, "num_candidates": num_candidates},
                                 size=k, source=["filepath"])
        latencies.append((time.perf_counter() - started) * 1000)
        got = {int(hit["_source"]["filepath"][4:10]) for hit in response["hits"]["hits"]}
        # Ties at the k-th distance make "exact" ambiguous: count a hit as right when
        # it is no farther than the exact k-th neighbour.
        kth = np.linalg.norm(signatures[exact[-1]].astype(np.float32) - signatures[q])
        hits += sum(1 for i in got
                    if np.linalg.norm(signatures[i].astype(np.float32) - signatures[q]) <= kth + 1e-6)
        total += k
    return hits / total, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--num-candidates", type=int, default=200)
    parser.add_argument("--cutoff", type=float, default=sig.DEFAULT_CUTOFF)
    parser.add_argument("--cache", type=Path, default=None, help="a .npy file keeping the signatures")
    args = parser.parse_args()

    from tests.photos import photos

    started = time.perf_counter()
    signatures = build_signatures(photos(), args.images, args.cache)
    print(f"{len(signatures)} signatures of edited photos in {time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(42)
    queries = rng.choice(len(signatures), size=min(args.queries, len(signatures)), replace=False)
    truth = ground_truth(signatures, queries, args.cutoff)
    pairs = sum(len(t) for t in truth)
    print(f"exhaustive scan: {pairs} pairs within {args.cutoff} for {len(queries)} queries "
          f"({pairs / len(queries):.1f} per query)")

    client = Elasticsearch(args.url, request_timeout=120)
    stores = {}
    try:
        for vector_index in ("hnsw", "flat"):
            index = f"match-bench-{vector_index}"
            client.indices.delete(index=index, ignore_unavailable=True)
            store = ElasticsearchStore([args.url], index=index, replicas=0, vector_index=vector_index,
                                       candidates=args.candidates, num_candidates=args.num_candidates,
                                       timeout=60)
            started = time.perf_counter()
            store.upsert_many(Record(_name(i), s) for i, s in enumerate(signatures))
            print(f"[{vector_index}] bulk upsert of {len(signatures)} records: "
                  f"{time.perf_counter() - started:.1f} s")
            stores[vector_index] = store
        for vector_index, store in stores.items():
            for knn in (False, True):
                store.knn = knn
                share, total, latencies = recall(store, signatures, queries, truth, args.cutoff)
                label = "words + kNN" if knn else "words alone"
                print(f"[{vector_index}] recall {label}: {share:.4%} of {total} pairs; "
                      f"search {_ms(latencies)}")
            store.knn = True
        for vector_index in stores:
            share, latencies = knn_quality(client, f"match-bench-{vector_index}", signatures, queries[:200],
                                           args.candidates, args.num_candidates)
            print(f"[{vector_index}] kNN recall@{args.candidates} vs exact l2: {share:.4%}; {_ms(latencies)}")
        word_index_variant(client, "match-bench-hnsw", "match-bench-integer", "integer")
        word_index_variant(client, "match-bench-hnsw", "match-bench-keyword", "keyword")
        for variant in ("keyword", "integer"):
            index = f"match-bench-{variant}"
            per_doc, fields = bytes_per_image(client, index)
            words = sum(size for name, size in fields.items() if name.startswith("word_"))
            latencies = word_query_latency(client, index, signatures, queries)
            print(f"[words as {variant}] {per_doc:.0f} bytes/image in all, "
                  f"words {words / len(signatures):.0f} "
                  f"bytes/image; 8-orientation word msearch {_ms(latencies)}")
        per_doc, fields = bytes_per_image(client, "match-bench-hnsw")
        print(f"[store index, hnsw] {per_doc:.0f} bytes/image (_stats store size / docs, force-merged)")
        split = {name: size for name, size in fields.items() if not name.startswith("word_")}
        split["word_0..62"] = sum(size for name, size in fields.items() if name.startswith("word_"))
        for name, size in sorted(split.items(), key=lambda item: -item[1]):
            print(f"    {name:<12} {size / len(signatures):8.0f} bytes/image")
    finally:
        for store in stores.values():
            store.close()
        client.indices.delete(index="match-bench-*", ignore_unavailable=True)
        client.close()


if __name__ == "__main__":
    main()
