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
3. Indexes every image with :class:`ElasticsearchStore` into three indices
   (:data:`VARIANTS`: match's own, hnsw + keyword words; ``flat`` kNN; ``integer``
   words) and counts which of those pairs a search retrieves, with words alone and
   with words + kNN (one orientation per query: the ground truth has one too).
4. Times ``search`` with 8 query signatures (the 8 orientations of an upload: one
   ``_msearch``), interleaved across the indices so machine load hits all alike;
   compares kNN alone, ``hnsw`` vs ``flat``, against the exact l2 neighbours; and
   reports bytes per image (``_stats`` store size / docs, after a force merge, with
   the per-field split of ``_disk_usage``).

The indices it creates are named ``match-bench-<variant>`` and deleted by name at the end.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from elasticsearch import Elasticsearch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from match import signature as sig
from match.store.base import Record
from match.store.elasticsearch import ElasticsearchStore, index_body

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


#: The indices compared: name -> index_body options.
VARIANTS: dict[str, dict[str, str]] = {
    "hnsw": {"vector_index": "hnsw", "word_type": "keyword"},  # what match creates
    "flat": {"vector_index": "flat", "word_type": "keyword"},
    "integer-words": {"vector_index": "hnsw", "word_type": "integer"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
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

    client = Elasticsearch(args.url, request_timeout=300)
    stores: dict[str, ElasticsearchStore] = {}
    try:
        for variant, options in VARIANTS.items():
            index = f"match-bench-{variant}"
            client.indices.delete(index=index, ignore_unavailable=True)
            client.indices.create(index=index, **index_body(replicas=0, **options))
            store = ElasticsearchStore([args.url], index=index, candidates=args.candidates,
                                       num_candidates=2 * args.candidates, timeout=120)
            started = time.perf_counter()
            store.upsert_many(Record(_name(i), s) for i, s in enumerate(signatures))
            elapsed = time.perf_counter() - started
            print(f"[{variant}] bulk upsert of {len(signatures)} records: {elapsed:.1f} s")
            stores[variant] = store
        for variant, store in stores.items():
            for knn in (False, True):
                store.knn = knn
                share, total, _ = recall(store, signatures, queries, truth, args.cutoff)
                label = "words + kNN" if knn else "words alone"
                print(f"[{variant}] candidate recall, {label}: {share:.4%} of {total} pairs")
        # Latencies interleaved across the variants, so load on the machine hits all alike.
        latencies: dict[str, dict[bool, list[float]]] = {v: {False: [], True: []} for v in stores}
        for start in range(0, len(queries) - 7, 8):
            batch = signatures[queries[start:start + 8]]
            for variant, store in stores.items():
                for knn in (False, True):
                    store.knn = knn
                    began = time.perf_counter()
                    store.search(batch, size=10)
                    latencies[variant][knn].append((time.perf_counter() - began) * 1000)
        for variant in stores:
            for knn in (False, True):
                label = "words + kNN" if knn else "words alone"
                print(f"[{variant}] search of 8 orientations ({label}): {_ms(latencies[variant][knn])}")
        for variant in ("hnsw", "flat"):
            share, knn_latencies = knn_quality(client, f"match-bench-{variant}", signatures, queries[:200],
                                               args.candidates, 2 * args.candidates)
            print(f"[{variant}] kNN alone: recall@{args.candidates} vs exact l2 {share:.4%}; "
                  f"{_ms(knn_latencies)}")
        for variant in stores:
            per_doc, fields = bytes_per_image(client, f"match-bench-{variant}")
            split = {name: size for name, size in fields.items() if not name.startswith("word_")}
            split["word_0..62"] = sum(size for name, size in fields.items() if name.startswith("word_"))
            shown = ", ".join(f"{name} {size / len(signatures):.0f}"
                              for name, size in sorted(split.items(), key=lambda item: -item[1])
                              if size / len(signatures) >= 1)
            print(f"[{variant}] {per_doc:.0f} bytes/image (_stats store / docs, force-merged): {shown}")
    finally:
        for store in stores.values():
            store.close()
        for variant in VARIANTS:  # by name: other runs' match-bench-* indices stay
            client.indices.delete(index=f"match-bench-{variant}", ignore_unavailable=True)
        client.close()


if __name__ == "__main__":
    main()
