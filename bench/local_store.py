"""Benchmark the embedded store: insert rate, cache load, search latency, memory.

    python bench/local_store.py                      # 10k and 100k records
    python bench/local_store.py --sizes 1000 --searches 50

For each size it fills a fresh store in a temporary directory with synthetic
signatures (int8, values in -2..2, as Goldberg signatures have), then prints:

* the bulk insert rate (``upsert_many`` in batches) and the single ``upsert`` rate
  (one transaction and one fsync each, as the HTTP API's add does);
* the first search of a fresh process-like store (it loads the whole cache) and the
  resident memory that cache added, per image;
* search latency p50 / p99 for 1 query signature and for 8 (all orientations), with
  queries that are near-duplicates of stored records, so there are hits to rank;
* the latency of a search right after another store instance added one record (the
  incremental refresh that gunicorn workers pay for each other's writes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from match.store import Record
from match.store.local import LocalStore

BATCH = 5_000


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentiles(run: Callable[[], object], times: int) -> tuple[float, float, float]:
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
    walls.sort()
    p99 = walls[min(len(walls) - 1, int(len(walls) * 0.99))]
    return statistics.median(walls), p99, statistics.median(cpus)


def bench(size: int, searches: int, directory: Path) -> None:
    rng = np.random.default_rng(size)
    signatures = rng.integers(-2, 3, (size, 648), dtype=np.int8)
    store = LocalStore(directory / "bench.sqlite3")

    start = time.perf_counter()
    for offset in range(0, size, BATCH):
        store.upsert_many(Record(f"img/{offset + i:07d}.jpg", signatures[offset + i], {"n": offset + i})
                          for i in range(min(BATCH, size - offset)))
    bulk_rate = size / (time.perf_counter() - start)

    singles = 200
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

    one = [near(i) for i in rng.choice(size, searches)]
    eight = [np.stack([near(i) for _ in range(8)]) for i in rng.choice(size, searches)]
    queue1, queue8 = iter(one * 2), iter(eight * 2)
    p50_1, p99_1, cpu_1 = percentiles(lambda: searcher.search(next(queue1)), searches)
    p50_8, p99_8, cpu_8 = percentiles(lambda: searcher.search(next(queue8)), searches)

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
          f"cache load {load_seconds * 1000:>6,.0f} ms, {per_image:>5,.0f} B/image")
    print(f"{'':>17} | search, 1 signature:  p50 {p50_1:6.1f} ms  p99 {p99_1:6.1f} ms  cpu {cpu_1:6.1f} ms")
    print(f"{'':>17} | search, 8 signatures: p50 {p50_8:6.1f} ms  p99 {p99_8:6.1f} ms  cpu {cpu_8:6.1f} ms")
    print(f"{'':>17} | add in another instance, then an 8-signature search: p50 {p50_fresh:6.1f} ms")


def main() -> None:
    """Run the benchmark for each ``--sizes``; the load average tells how busy the machine was."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--searches", type=int, default=200, help="searches timed per case")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="match-bench-") as directory:
            bench(size, args.searches, Path(directory))


if __name__ == "__main__":
    main()
