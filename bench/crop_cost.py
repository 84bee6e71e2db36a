"""What local features cost (issue 10): bytes per image, ingest rate, search latency.

Not a test. Three measurements, each side by side in one run (local features on and
off, alternating), so a noisy shared machine moves both alike::

    python -m bench.crop_cost [--bytes] [--ingest N] [--search 100000] [--rounds 3]

``--bytes``
    The real photos of bench/crop_corpus.py and tests/photos.py added to two fresh
    embedded stores, one with local features and one without; the SQLite files are
    vacuumed and their sizes compared (bytes per image added by the features), next
    to the mean encoded feature blob and word list.
``--ingest N``
    ``match add DIR`` (a process per run, start included) on N distinct ~1 MP JPEGs
    (bench.common.jpeg_corpus), with MATCH_LOCAL_FEATURES true and false in turn;
    images per second, median over the rounds, and the ratio.
``--search N``
    An embedded store of N records: the real photos, plus synthetic records whose
    signature is a real one with 20-80 values redrawn and whose features are a real
    photo's with 5% of the descriptor bits flipped (so visual words spread as a real
    collection's would). Queries are edits (crops, rotation, screenshot, resize) of
    the real photos; p50/p99 of ``match.service.search`` with local features on and
    off against the same store, interleaved.
"""

from __future__ import annotations

import argparse
import io
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common
from match import config, features, image, service, signature
from match.store import Record, open_store


def _photos() -> list[Path]:
    from bench.crop_corpus import photos as bench_photos

    paths = [photo.path for photo in bench_photos()]
    return paths + common.photo_paths()


def _settings(directory: str, on: bool) -> dict[str, object]:
    return config.load({"MATCH_STORE": "local", "MATCH_DATA_DIR": directory,
                        "MATCH_LOCAL_FEATURES": on})


def measure_bytes() -> None:
    """Bytes per image that local features add to the embedded store."""
    paths = _photos()
    sizes = {}
    blob = words = 0
    for on in (False, True):
        with tempfile.TemporaryDirectory() as directory:
            settings = _settings(directory, on)
            store = open_store(settings)
            for index, path in enumerate(paths):
                record = service.add(store, settings, filepath=f"p/{index:05d}.jpg", data=path.read_bytes())
                if on and record.features is not None:
                    blob += len(features.encode(record.features))
                    words += 2 * len(record.words)
            store.close()
            database = Path(directory) / "match.sqlite3"
            connection = sqlite3.connect(database)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.execute("VACUUM")
            connection.close()
            sizes[on] = database.stat().st_size
    n = len(paths)
    print(f"embedded store, {n} real photos: {sizes[False] / n:,.0f} B/image without local features, "
          f"{sizes[True] / n:,.0f} with: +{(sizes[True] - sizes[False]) / n:,.0f} B/image "
          f"(feature blob {blob / n:,.0f} B, word list {words / n:,.0f} B)")


def measure_ingest(count: int, rounds: int) -> None:
    """``match add DIR`` images/s with and without local features, alternating."""
    directory = common.jpeg_corpus(count)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for on in (False, True):
            with tempfile.TemporaryDirectory() as data:
                env = dict(os.environ, MATCH_STORE="local", MATCH_DATA_DIR=data,
                           MATCH_LOCAL_FEATURES=str(on).lower())
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "match", "add", str(directory)], env=env,
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                rates[on].append(count / (time.perf_counter() - start))
    off, on_ = float(np.median(rates[False])), float(np.median(rates[True]))
    print(f"match add of {count} ~1 MP JPEGs (median of {rounds}): {off:.1f} images/s signature only, "
          f"{on_:.1f} with local features: {on_ / off:.0%} of today's rate")


def _queries(paths: list[Path], count: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    queries = []
    for path in rng.choice(paths, count, replace=False):
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
        width, height = picture.size
        kind = len(queries) % 4
        if kind == 0:
            picture = picture.crop((width // 8, height // 8, width * 7 // 8, height * 7 // 8))
        elif kind == 1:
            picture = picture.rotate(15, expand=True)
        elif kind == 2:
            canvas = Image.new("RGB", (int(width / 0.6), int(height / 0.6 * 0.8)), (236, 236, 236))
            canvas.paste(picture.resize((width, height)), (width // 5, height // 6))
            picture = canvas
        else:
            picture = picture.resize((width // 2, height // 2))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        queries.append(buffer.getvalue())
    return queries


def measure_search(count: int, rounds: int) -> None:
    """p50/p99 of service.search at ``count`` records, features on and off."""
    paths = _photos()
    real: list[Record] = []
    for index, path in enumerate(paths):
        pixels = image.load_rgb(path.read_bytes())
        real.append(Record(f"real/{index:05d}.jpg", signature.generate(pixels).astype(np.int8),
                           features=features.extract(pixels)))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(_settings(directory, True))
        store.upsert_many(real)
        batch: list[Record] = []
        started = time.perf_counter()
        for row in range(count - len(real)):
            source = real[int(rng.integers(len(real)))]
            sig = source.signature.copy()
            where = rng.choice(signature.SIGNATURE_LENGTH, int(rng.integers(20, 81)), replace=False)
            sig[where] = rng.integers(-2, 3, len(where))
            found = source.features
            assert found is not None
            flips = rng.random(found.descriptors.shape + (8,)) < 0.05
            descriptors = found.descriptors ^ np.packbits(flips, axis=-1).reshape(found.descriptors.shape)
            batch.append(Record(f"synthetic/{row:07d}", sig, features=features.Features(
                found.points, descriptors, found.width, found.height)))
            if len(batch) == 5000:
                store.upsert_many(batch)
                batch.clear()
                elapsed = time.perf_counter() - started
                print(f"  {row + 1 + len(real)} records, {elapsed:.0f} s", file=sys.stderr)
        store.upsert_many(batch)
        queries = _queries(paths, 40)
        latencies: dict[bool, list[float]] = {True: [], False: []}
        settings = {on: _settings(directory, on) for on in (True, False)}
        for on in (True, False):  # warm: the first search of each loads the cache
            service.search(store, settings[on], queries[0])
        for _ in range(rounds):
            for query in queries:
                for on in (False, True):
                    start = time.perf_counter()
                    service.search(store, settings[on], query)
                    latencies[on].append((time.perf_counter() - start) * 1000)
        store.close()
    for on in (False, True):
        values = latencies[on]
        print(f"search at {count:,} records, local features {'on ' if on else 'off'}: "
              f"p50 {np.percentile(values, 50):.1f} ms, p99 {np.percentile(values, 99):.1f} ms")
    ratio = np.percentile(latencies[True], 50) / np.percentile(latencies[False], 50)
    print(f"ratio on/off: p50 {ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the selected measurements and print one line each."""
    parser = argparse.ArgumentParser(prog="python -m bench.crop_cost")
    parser.add_argument("--bytes", action="store_true")
    parser.add_argument("--ingest", type=int, default=0)
    parser.add_argument("--search", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {common.machine()}")
    if args.bytes:
        measure_bytes()
    if args.ingest:
        measure_ingest(args.ingest, args.rounds)
    if args.search:
        measure_search(args.search, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
