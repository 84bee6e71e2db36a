"""What every bench script shares: timing, percentiles, memory, and the scale corpus.

Timing
    :func:`interleaved` times several contenders round-robin (one call each per round),
    so a noisy, shared machine slows them alike; the figure is the median per
    contender. :func:`summary` gives p50 / p99 / mean and queries per second of a list
    of latencies. :func:`rss_bytes` reads a process's resident set size.

The scale corpus (:func:`scale_signatures`)
    Millions of photographs are not at hand, so the signatures for the scale runs
    are made from many random edits of the ~120 real photographs of
    ``tests/photos.py``: each photo is decoded once to the grey image image-match
    signs (long side :data:`BASE_SIDE`), and signature ``i`` is the one of photo
    ``i % P`` after a random crop (keeping 55-100% of each side, anywhere), a
    resampling to 35-100% of that size (nearest neighbour), a brightness/contrast
    change (gain 0.7-1.3, offset -0.1..0.1, clipped), a gamma of 0.7-1.4 and Gaussian
    noise (sigma 0-0.04), all in numpy (``rng = default_rng(seed + i)``: the corpus
    is deterministic). Signing the edited grey array (``signature.generate``) then
    takes about a millisecond, so a million signatures take minutes on two cores.

    Why not random signatures: Elasticsearch's cost for a 63-term ``should`` query
    is the total length of the 63 posting lists it walks, and in real signatures
    some words are very common (flat sky, walls and borders give runs of zeros:
    word 0 of an all-"same" run is one value), whereas uniform random int8 values
    make every word unique. :func:`word_stats` prints how common the most common
    words are, to show the corpus is not the easy case.

The cache lives in ``$MATCH_BENCH_CACHE`` or ``~/.cache/match-bench``.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from match import image, signature

#: Long side of the grey photos the scale corpus is cut from.
BASE_SIDE = 400


def cache_dir() -> Path:
    """Where generated corpora are kept (``$MATCH_BENCH_CACHE``, ``~/.cache/match-bench``)."""
    configured = os.environ.get("MATCH_BENCH_CACHE")
    path = Path(configured).expanduser() if configured else Path.home() / ".cache" / "match-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Where scripts append their JSON-lines results (``$MATCH_BENCH_RESULTS`` or
    ``bench/results``, git-ignored); bench/plot.py reads them."""
    configured = os.environ.get("MATCH_BENCH_RESULTS")
    path = Path(configured) if configured else Path(__file__).parent / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- timing ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank (no interpolation)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, int(np.ceil(q / 100.0 * len(ordered))) - 1))
    return float(ordered[rank])


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean (ms) and qps (1000 / mean: one client in series) of latencies."""
    mean = statistics.fmean(latencies_ms) if latencies_ms else float("nan")
    return {"p50": percentile(latencies_ms, 50), "p99": percentile(latencies_ms, 99),
            "mean": mean, "qps": 1000.0 / mean if mean else float("nan"), "samples": len(latencies_ms)}


def time_calls(function: Callable[[Any], object], arguments: Sequence[Any],
               warmup: int = 3) -> list[float]:
    """Latency (ms) of ``function(a)`` for each ``a``, after ``warmup`` untimed calls."""
    for argument in arguments[:warmup]:
        function(argument)
    latencies = []
    for argument in arguments:
        started = time.perf_counter()
        function(argument)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, timed round-robin over ``rounds``."""
    for function in contenders.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, function in contenders.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def machine() -> str:
    """One line: cores, CPU model, RAM."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    usable = len(os.sched_getaffinity(0))
    return f"{os.cpu_count()} cores ({usable} usable), {model}, {mem_kb / 2**20:.1f} GiB RAM"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A Markdown table (so the output can be pasted into BENCHMARKS.md)."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# --- real photos -----------------------------------------------------------------------


def photo_paths(limit: int | None = None) -> list[Path]:
    """The real photographs of tests/photos.py (downloaded from Debian on first use)."""
    from tests.photos import photos

    paths = photos()
    return paths[:limit] if limit else paths


def jpeg_bytes(picture: Any, quality: int = 90) -> bytes:
    """A PIL image saved as JPEG bytes."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def grey_photo(path: Path, side: int = BASE_SIDE) -> np.ndarray:
    """The grey image (float64 in [0, 1]) of a photo scaled to a long side of ``side``."""
    from PIL import Image

    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
        rgb.thumbnail((side, side), Image.Resampling.LANCZOS)
        return image.rgb_to_grey(np.asarray(rgb, dtype=np.uint8))


# --- the scale corpus ------------------------------------------------------------------


def edit_grey(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop + rescale + brightness/contrast/gamma + noise of a grey image."""
    height, width = grey.shape
    h = int(height * rng.uniform(0.55, 1.0))
    w = int(width * rng.uniform(0.55, 1.0))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    scale = rng.uniform(0.35, 1.0)
    rows = top + (np.arange(max(16, int(h * scale))) / scale).astype(int).clip(0, h - 1)
    cols = left + (np.arange(max(16, int(w * scale))) / scale).astype(int).clip(0, w - 1)
    out = grey[np.ix_(rows, cols)].astype(np.float32)
    out *= np.float32(rng.uniform(0.7, 1.3))
    out += np.float32(rng.uniform(-0.1, 0.1))
    np.clip(out, 0.0, 1.0, out=out)
    out **= np.float32(rng.uniform(0.7, 1.4))
    sigma = rng.uniform(0.0, 0.04)
    if sigma > 0.005:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    # Quantize to 8-bit levels as a decoded image would be.
    np.clip(out, 0.0, 1.0, out=out)
    out *= 255.0
    np.rint(out, out=out)
    return out.astype(np.float64) / 255.0


_GREYS: list[np.ndarray] = []


def _init_greys(paths: list[str]) -> None:
    _GREYS[:] = [grey_photo(Path(p)) for p in paths]


def _sign_range(job: tuple[int, int, int]) -> np.ndarray:
    start, stop, seed = job
    out = np.empty((stop - start, signature.SIGNATURE_LENGTH), dtype=np.int8)
    for row, i in enumerate(range(start, stop)):
        grey = _GREYS[i % len(_GREYS)]
        if i < len(_GREYS):
            out[row] = signature.generate(grey)  # the first copy of each photo is unedited
        else:
            out[row] = signature.generate(edit_grey(grey, np.random.default_rng(seed + i)))
    return out


def image_signatures(count: int, *, seed: int = 0, jobs: int | None = None,
                     progress: bool = False) -> np.ndarray:
    """``count`` signatures (int8, ``(count, 648)``) of randomly edited real photos, cached.

    See the module docstring for the edits. A cached corpus of at least ``count``
    signatures with the same seed is reused (its first ``count`` rows).
    """
    for cached in sorted(cache_dir().glob(f"images-seed{seed}-*.npy")):
        if int(cached.stem.rsplit("-", 1)[1]) >= count:
            return np.asarray(np.load(cached, mmap_mode="r")[:count])
    paths = [str(p) for p in photo_paths()]
    chunk = 1000
    jobs_list = [(start, min(start + chunk, count), seed) for start in range(0, count, chunk)]
    parts = []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count(), initializer=_init_greys,
                             initargs=(paths,)) as pool:
        for done, part in enumerate(pool.map(_sign_range, jobs_list), 1):
            parts.append(part)
            if progress and done % 10 == 0:
                made = sum(len(p) for p in parts)
                print(f"  {made:,} signatures, {made / (time.perf_counter() - started):,.0f}/s",
                      flush=True)
    result = np.concatenate(parts) if parts else np.zeros((0, signature.SIGNATURE_LENGTH), np.int8)
    target = cache_dir() / f"images-seed{seed}-{count}.npy"
    np.save(str(target) + ".tmp.npy", result)
    os.replace(str(target) + ".tmp.npy", target)
    return result


#: Signatures made from image edits; the scale corpus mutates them beyond this.
IMAGE_EDITS = 100_000


def scale_signatures(count: int, *, seed: int = 0, base: int = IMAGE_EDITS,
                     progress: bool = False) -> np.ndarray:
    """The scale corpus: ``count`` signatures (int8, ``(count, 648)``).

    The first ``min(count, base)`` are :func:`image_signatures` (edited photos).
    Beyond that (the 1M run), signing more image edits would take an hour on two
    cores, so row ``i`` is row ``i % base`` with 20-80 of its 648 values redrawn
    (``default_rng(seed + i)``): another near-copy of the same photo, as an edit
    would give, with the word distribution of real signatures.
    """
    first = image_signatures(min(count, base), seed=seed, progress=progress)
    if count <= base:
        return first
    result = np.empty((count, signature.SIGNATURE_LENGTH), dtype=np.int8)
    result[:base] = first
    rng = np.random.default_rng(seed + count)
    sources = np.arange(base, count) % base
    result[base:] = first[sources]
    changes = rng.integers(20, 81, count - base)
    for row, k in zip(range(base, count), changes, strict=True):
        where = rng.choice(signature.SIGNATURE_LENGTH, int(k), replace=False)
        result[row, where] = rng.integers(-2, 3, int(k))
    return result


def query_signatures(count: int, seed: int = 7) -> list[np.ndarray]:
    """``count`` search queries: new edits of the real photos (not in the scale corpus,
    another seed), each signed in its 8 orientations (int8 ``(8, 648)``; row 0 is the
    image as given)."""
    paths = photo_paths()
    rng = np.random.default_rng(seed + 10**9)
    greys: dict[int, np.ndarray] = {}
    queries = []
    for _ in range(count):
        photo = int(rng.integers(len(paths)))
        if photo not in greys:
            greys[photo] = grey_photo(paths[photo])
        queries.append(signature.generate_all(edit_grey(greys[photo], rng)).astype(np.int8))
    return queries


def near_queries(signatures: np.ndarray, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Query signatures: stored ones with 40 of 648 values changed (a near-duplicate,
    so searches have a hit to find), and the indices they came from."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(signatures), size=count, replace=len(signatures) < count)
    queries = np.array(signatures[picks], dtype=np.int8)
    for row in queries:
        where = rng.choice(signature.SIGNATURE_LENGTH, 40, replace=False)
        row[where] = rng.integers(-2, 3, 40)
    return queries, picks


def word_stats(signatures: np.ndarray) -> str:
    """How common the most common words are: the share of documents holding each
    field's most common value, max and median over the 63 fields."""
    words = signature.words(np.asarray(signatures))
    shares = []
    for column in words.T:
        _, counts = np.unique(column, return_counts=True)
        shares.append(counts.max() / len(column))
    distinct = np.mean([len(np.unique(column)) for column in words.T]) / len(words)
    return (f"most common word per field: max {max(shares):.1%}, median {np.median(shares):.1%} "
            f"of documents; distinct values per field {distinct:.1%} of documents")


# --- HTTP bodies and JPEGs for the serving benches (bench/serving.py runs the server) ----


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (for wrk and raw clients)."""
    boundary = "matchbench" + os.urandom(8).hex()
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def jpeg_corpus(count: int, size: tuple[int, int] = (1155, 866), seed: int = 0) -> Path:
    """A directory of ``count`` distinct JPEGs of ``size`` (default about 1 MP),
    quality 90: random crops (80-100%) of the real photos, resized. Cached."""
    from PIL import Image

    directory = cache_dir() / f"jpeg-{size[0]}x{size[1]}-seed{seed}-{count}"
    if (directory / ".complete").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    paths = photo_paths()
    rng = np.random.default_rng(seed)
    for i in range(count):
        with Image.open(paths[i % len(paths)]) as picture:
            width, height = picture.size
            keep = rng.uniform(0.8, 1.0)
            w, h = int(width * keep), int(height * keep)
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            crop = picture.convert("RGB").crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BILINEAR)
            crop.save(directory / f"{i:06d}.jpg", "JPEG", quality=90)
    (directory / ".complete").write_text(str(count))
    return directory


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def es_pid(url: str) -> int | None:
    """PID of the Elasticsearch node answering at ``url`` when it runs on this machine."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/_nodes/_local/process", timeout=10) as response:
            nodes = json.load(response)["nodes"]
        pid = int(next(iter(nodes.values()))["process"]["id"])
        return pid if Path(f"/proc/{pid}").exists() else None
    except (OSError, KeyError, StopIteration, ValueError):
        return None
