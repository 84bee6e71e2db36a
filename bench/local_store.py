"""Benchmark the embedded store: insert rate, cache load, search latency, memory.

    python -m bench.local_store                      # 10k and 100k records
    python -m bench.local_store --sizes 1000 --searches 50
    python -m bench.local_store --corpus random      # uniform random signatures
    python -m bench.local_store --smoke              # CI: a few seconds

For each size it fills a fresh store in a temporary directory with the scale corpus
of :func:`bench.common.scale_signatures` (edited real photos; the one
``bench/es_scale.py`` loads into Elasticsearch), or with ``--corpus random`` uniform
synthetic signatures (int8, values in -2..2), then prints:

* the bulk insert rate (``upsert_many`` in batches) and the single ``upsert`` rate
  (one transaction and one fsync each, as the HTTP API's add does);
* the first search of a fresh process-like store (it loads the whole cache) and the
  resident memory that cache added, per image;
* search latency p50 / p99 for 1 query signature and for 8 (all orientations): with
  the scale corpus, the queries are new edits of the photos in their 8 orientations
  (:func:`bench.common.query_signatures`, as bench/es_scale.py); with random
  signatures, near-duplicates of stored records, so there are hits to rank;
* the database file size per row (SQLite file + WAL after a checkpoint);
* the latency of a search right after another store instance added one record (the
  incremental refresh that gunicorn workers pay for each other's writes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import common
from bench.common import rss_bytes
from match.store import Record
from match.store.local import LocalStore

BATCH = 5_000


def percentiles(run: Callable[[], object], times: int,
                samples: list[float] | None = None) -> tuple[float, float, float]:
    """p50 and p99 of ``run()``'s wall time and its median CPU time, in milliseconds.

    CPU time (all threads of this process, BLAS's included) says what a search costs
    when the machine is shared; on an idle machine wall time is about CPU time divided
    by the BLAS threads that had a core to themselves.
    """
    run()
    walls, cpus = [], []
    for _ in range(times):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    if samples is not None:
        samples.extend(walls)
    return common.percentile(walls, 50), common.percentile(walls, 99), statistics.median(cpus)


def bench(size: int, searches: int, directory: Path, corpus: str = "scale",
          smoke: bool = False) -> None:
    rng = np.random.default_rng(size)
    if corpus == "scale":
        signatures = np.asarray(common.scale_signatures(size))
    else:
        signatures = rng.integers(-2, 3, (size, 648), dtype=np.int8)
    store = LocalStore(directory / "bench.sqlite3")

    start = time.perf_counter()
    for offset in range(0, size, BATCH):
        store.upsert_many(Record(f"img/{offset + i:07d}.jpg", signatures[offset + i], {"n": offset + i})
                          for i in range(min(BATCH, size - offset)))
    bulk_rate = size / (time.perf_counter() - start)

    singles = 20 if smoke else 200
    start = time.perf_counter()
    for i in range(singles):
        store.upsert(Record(f"single/{i:04d}.jpg", signatures[i], {"n": i}))
    single_rate = singles / (time.perf_counter() - start)
    store.close()

    # A fresh instance: its first search loads every signature into its cache.
    searcher = LocalStore(directory / "bench.sqlite3")
    before = rss_bytes()
    start = time.perf_counter()
    searcher.search(signatures[0])
    load_seconds = time.perf_counter() - start
    per_image = (rss_bytes() - before) / (size + singles)

    def near(i: int) -> np.ndarray:
        changed = signatures[i].copy()
        changed[rng.choice(648, 40, replace=False)] = rng.integers(-2, 3, 40, dtype=np.int8)
        return changed

    if corpus == "scale":
        eight = common.query_signatures(searches)
        one = [query[0] for query in eight]
    else:
        one = [near(i) for i in rng.choice(size, searches)]
        eight = [np.stack([near(i) for _ in range(8)]) for i in rng.choice(size, searches)]
    queue1, queue8 = iter(one * 2), iter(eight * 2)
    walls_1: list[float] = []
    walls_8: list[float] = []
    p50_1, p99_1, cpu_1 = percentiles(lambda: searcher.search(next(queue1)), searches, walls_1)
    p50_8, p99_8, cpu_8 = percentiles(lambda: searcher.search(next(queue8)), searches, walls_8)
    connection = searcher._connection()  # a checkpoint folds the WAL into the file
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    file_bytes = sum(path.stat().st_size for path in directory.glob("bench.sqlite3*"))
    rows = size + singles

    writer = LocalStore(directory / "bench.sqlite3")
    counter = iter(range(10**9))

    def add_then_search() -> None:
        i = next(counter)
        writer.upsert(Record(f"fresh/{i:06d}.jpg", signatures[i % size]))
        searcher.search(eight[i % len(eight)])

    p50_fresh, _, _ = percentiles(add_then_search, min(searches, 50))
    assert searcher.count() == size + singles + min(searches, 50) + 1
    writer.close()
    searcher.close()

    print(f"{size:>9,} records | bulk insert {bulk_rate:>8,.0f}/s | single upsert {single_rate:>5,.0f}/s | "
          f"cache load {load_seconds * 1000:>6,.0f} ms, {per_image:>5,.0f} B/image in RAM | "
          f"file {file_bytes / rows:,.0f} B/row")
    print(f"{'':>17} | search, 1 signature:  p50 {p50_1:6.1f} ms  p99 {p99_1:6.1f} ms  cpu {cpu_1:6.1f} ms")
    print(f"{'':>17} | search, 8 signatures: p50 {p50_8:6.1f} ms  p99 {p99_8:6.1f} ms  cpu {cpu_8:6.1f} ms")
    print(f"{'':>17} | add in another instance, then an 8-signature search: p50 {p50_fresh:6.1f} ms")
    with open(common.results_dir() / "local_store.jsonl", "a") as out:
        for name, walls, cpu in (("match 1", walls_1, cpu_1), ("match 8", walls_8, cpu_8)):
            out.write(json.dumps({"backend": "local", "corpus": corpus, "n": rows, "contender": name,
                                  **common.summary(walls), "cpu_ms": cpu,
                                  "file_bytes_per_row": file_bytes / rows, "ram_bytes_per_row": per_image,
                                  "time": time.time(), "smoke": smoke}) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark for each ``--sizes``; the load average tells how busy the machine was."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--searches", type=int, default=200, help="searches timed per case")
    parser.add_argument("--corpus", choices=("scale", "random"), default="scale",
                        help="edited real photos (default) or uniform random signatures")
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 500 records, 5 searches")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.searches = [500], 5
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="match-bench-") as directory:
            bench(size, args.searches, Path(directory), args.corpus, args.smoke)


if __name__ == "__main__":
    main()
