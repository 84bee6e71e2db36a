"""Find the crop (issue 10): recall and false matches under crops, borders, rotations, captions.

Not a test (tests/test_bench_smoke.py runs ``--smoke``, on generated images). It needs
the corpus of bench/crop_corpus.py (real photographs from Debian packages, none of them
the tests' photos; downloaded on first use) and imagehash (``pip install -e .[bench]``)::

    python -m bench.crop_quality --part report [--limit N] [--transforms a,b]
        [--groups PREFIXES | --exclude-groups PREFIXES]
        [--methods goldberg,fused,phash] [--phash-threshold 10] [--json out.json]
    python -m bench.crop_quality --part tune --dump-distances [--dump-out rows.tsv]

The set. Every photo of the corpus (long side <= 1024, JPEG q90) is an *original*.
Within each group (a package and a series or place, see bench/crop_corpus.py) the
photos are ranked by the SHA-256 of their name; every third one (ranks 2, 5, 8, ...)
is a *negative*: never indexed, its edits are queries that must find nothing. The
others are *indexed*: their original file is added to the store. Independently, the
first hex digit of the SHA-256 puts each photo in the ``tune`` part (even) or the
``report`` part (odd): thresholds are tuned on one part and the figures reported on
the other. The store always holds the indexed photos of both parts (the same index
whatever part is queried); ``--part`` chooses which photos' edits are queried.

Queries: each selected photo edited by each transform (``--transforms`` to choose),
saved as JPEG q90 (q30 for ``jpeg q30``). The random choices of a transform (which
corner, which sign of an angle) come from a generator seeded by the photo's name and
the transform's name, so a query is the same whatever the order or the selection.

Figures, per transform and method, over the queries of indexed photos:

* R@1: the first hit is the original;
* R@thr: the original is among the reported hits at all (recall under the
  reported-match rule: what a client that takes every hit gets);
* wrong: the query's hits include a *different* stored image (a wrong-image hit),
  as a share of the queries;

and over the queries of negatives: FP, the share of queries with any hit at all.
Latency: p50/p99 of one search call (signing the query included) per method.

Methods:

* ``goldberg``: match.service.search on an embedded store (LocalStore in a fresh
  temporary MATCH_DATA_DIR) with MATCH_LOCAL_FEATURES=false: the signature search of
  today. When match has no such setting (before issue 10), this is simply today's code.
* ``fused``: the same with the default settings (local features on, once issue 10
  lands; its own store, built with them). Skipped when match has no
  MATCH_LOCAL_FEATURES setting: it would be the same code as ``goldberg``.
* ``phash``: imagehash's 64-bit pHash of the query (as given, one orientation) against
  every indexed original's; one hit, the nearest, when its Hamming distance is at most
  ``--phash-threshold``.

Hits are read with getattr and defaults (``distance``, ``inliers``, ``region``,
``found_by``), so the script runs before and after the fused search.

``--dump-distances`` prints, for the selected part (use ``--part tune``), the
signature distance (8 orientations, as the search does) of each query to its true
original and to the nearest wrong image, summarised per transform, and the share of
true originals and of nearest wrong images at or below each distance: what the
"uncertain band" of the fused rule is set from. When hits carry ``inliers``, it also
prints the inliers of the true original's hit and the most inliers of a wrong hit.
``--dump-out FILE`` writes one TSV row per query, with each method's outcome (``top1``,
``found``, ``wrong``: other images only, ``none``) and what found the true original.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench import common
from bench import quality as base_quality

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]
#: Long side of the originals (the corpus is stored at most this large already).
LONG_SIDE = 1024


# --- transforms ------------------------------------------------------------------------


def _crop_fraction(picture: Image.Image, keep_w: float, keep_h: float, x_frac: float,
                   y_frac: float) -> Image.Image:
    """Keep ``keep_w`` x ``keep_h`` of the sides; ``x_frac``/``y_frac`` in [0, 1] place
    the window (0.5 = centred)."""
    width, height = picture.size
    w, h = max(1, round(width * keep_w)), max(1, round(height * keep_h))
    x, y = round((width - w) * x_frac), round((height - h) * y_frac)
    return picture.crop((x, y, x + w, y + h))


def _off_centre(rng: np.random.Generator) -> float:
    """A window position in the outer thirds (never near the centre)."""
    value = float(rng.uniform(0.0, 1.0 / 3.0))
    return value if rng.integers(2) else 1.0 - value


def _crop_area(area: float, low: float) -> Transform:
    def crop(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        keep_w = float(rng.uniform(low, min(1.0, area / low)))
        keep_h = area / keep_w
        return _crop_fraction(picture, keep_w, keep_h, _off_centre(rng), _off_centre(rng))
    return crop


def _border(fraction: float) -> Transform:
    def border(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        colours = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (240, 236, 224))
        colour = colours[int(rng.integers(len(colours)))]
        dx, dy = max(1, round(picture.width * fraction)), max(1, round(picture.height * fraction))
        framed = Image.new("RGB", (picture.width + 2 * dx, picture.height + 2 * dy), colour)
        framed.paste(picture.convert("RGB"), (dx, dy))
        return framed
    return border


def _rotate(degrees: float) -> Transform:
    def rotate(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        sign = 1 if rng.integers(2) else -1
        fill = (0, 0, 0) if rng.integers(2) else (255, 255, 255)
        return picture.convert("RGB").rotate(sign * degrees, resample=Image.Resampling.BICUBIC,
                                             expand=True, fillcolor=fill)
    return rotate


_CAPTIONS = ("When you see it", "Best holiday ever #travel", "Source: the internet",
             "This is fine", "Shared 12,345 times", "Photo of the day")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _caption(where: str) -> Transform:
    def caption(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
        picture = picture.convert("RGB")
        bar = max(12, round(picture.height * 0.12))
        dark = where == "below"
        background, ink = ((0, 0, 0), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
        canvas = Image.new("RGB", (picture.width, picture.height + bar), background)
        canvas.paste(picture, (0, 0 if where == "below" else bar))
        draw = ImageDraw.Draw(canvas)
        text = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))]
        y = picture.height if where == "below" else 0
        draw.text((picture.width // 30, y + bar // 5), text, fill=ink, font=_font(max(8, bar * 3 // 5)))
        return canvas
    return caption


def _screenshot(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The photo at 60% of the width of a screenshot-like canvas: a title bar with tabs,
    a side panel of text lines, flat panels and a status bar around it."""
    picture = picture.convert("RGB")
    width = round(picture.width / 0.6)
    top, bottom = max(24, width // 20), max(16, width // 40)
    height = top + bottom + picture.height + max(40, picture.height // 5)
    dark = bool(rng.integers(2))
    page, panel, ink = (((32, 33, 36), (48, 49, 54), (220, 220, 220)) if dark
                        else ((250, 250, 250), (232, 234, 237), (40, 40, 40)))
    canvas = Image.new("RGB", (width, height), page)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(9, top // 2))
    draw.rectangle((0, 0, width, top), fill=(60, 64, 67) if dark else (210, 214, 220))
    for tab in range(4):
        x = 8 + tab * width // 6
        draw.rectangle((x, 4, x + width // 7, top - 2), fill=panel)
        draw.text((x + 6, top // 4), f"Tab {tab + 1}", fill=ink, font=font)
    side = round(width * 0.22)
    draw.rectangle((0, top, side, height - bottom), fill=panel)
    for line in range(12):
        y = top + 10 + line * (top + 4)
        if y > height - bottom - top:
            break
        draw.text((10, y), f"Item {int(rng.integers(100, 999))}", fill=ink, font=font)
    left = side + int(rng.integers(8, max(9, width - side - picture.width - 8)))
    left = min(left, width - picture.width - 4)
    canvas.paste(picture, (left, top + 12))
    below = top + 12 + picture.height + 8
    draw.text((left, below), "Posted 3 hours ago · 1,024 likes · Reply", fill=ink, font=font)
    draw.rectangle((0, height - bottom, width, height), fill=(0, 120, 212))
    return canvas


def _perspective(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A moderate tilt: one edge of the photo shortened by 2 x 10% (a keystone), the
    outside filled black."""
    picture = picture.convert("RGB")
    width, height = picture.size
    squeeze = 0.10
    dx, dy = width * squeeze, height * squeeze
    corners = [(0.0, 0.0), (width, 0.0), (width, height), (0.0, height)]  # tl, tr, br, bl
    side = int(rng.integers(4))
    moved = list(corners)
    if side == 0:    # top edge farther away
        moved[0], moved[1] = (dx, 0.0), (width - dx, 0.0)
    elif side == 1:  # bottom edge
        moved[3], moved[2] = (dx, height), (width - dx, height)
    elif side == 2:  # left edge
        moved[0], moved[3] = (0.0, dy), (0.0, height - dy)
    else:            # right edge
        moved[1], moved[2] = (width, dy), (width, height - dy)
    coefficients = _perspective_coefficients(moved, corners)
    return picture.transform(picture.size, Image.Transform.PERSPECTIVE, coefficients,
                             Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def _perspective_coefficients(output: Sequence[tuple[float, float]],
                              source: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """PIL's 8 PERSPECTIVE coefficients mapping output pixels to source pixels."""
    rows, values = [], []
    for (x, y), (u, v) in zip(output, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values.extend([u, v])
    solution = np.linalg.solve(np.array(rows, dtype=float), np.array(values, dtype=float))
    return tuple(float(c) for c in solution)


TRANSFORMS: dict[str, Transform] = {
    **base_quality.TRANSFORMS,
    "crop 5% each side": lambda p, r: _crop_fraction(p, 0.9, 0.9, 0.5, 0.5),
    "crop 15% each side": lambda p, r: _crop_fraction(p, 0.7, 0.7, 0.5, 0.5),
    "crop 70% off-centre": lambda p, r: _crop_fraction(p, 0.7, 0.7, _off_centre(r), _off_centre(r)),
    "crop 50% area": _crop_area(0.5, 0.55),
    "crop 25% area": _crop_area(0.25, 0.35),
    "border 3%": _border(0.03),
    "border 10%": _border(0.10),
    "rotation 5": _rotate(5),
    "rotation 15": _rotate(15),
    "rotation 45": _rotate(45),
    "caption above": _caption("above"),
    "caption below": _caption("below"),
    "screenshot 60%": _screenshot,
    "perspective": _perspective,
}


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def edit(original: Image.Image, name: str, transform: str) -> bytes:
    """The query: ``original`` edited by ``transform`` as JPEG bytes (deterministic)."""
    rng = np.random.default_rng(_seed(name, transform))
    edited = TRANSFORMS[transform](original, rng).convert("RGB")
    return common.jpeg_bytes(edited, quality=30 if transform == "jpeg q30" else 90)


# --- the set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One photo of the set: where its original is, its group, role and part."""

    name: str
    group: str
    path: Path
    indexed: bool
    part: str


def split(photos: Sequence[tuple[str, str, Path]]) -> list[Item]:
    """Roles and parts (see the module docstring) of ``(name, group, path)`` photos."""
    by_group: dict[str, list[tuple[str, str, Path]]] = {}
    for photo in photos:
        by_group.setdefault(photo[1], []).append(photo)
    items = []
    for members in by_group.values():
        ranked = sorted(members, key=lambda p: hashlib.sha256(p[0].encode()).hexdigest())
        for rank, (name, group, path) in enumerate(ranked):
            digit = int(hashlib.sha256(name.encode()).hexdigest()[0], 16)
            items.append(Item(name, group, path, indexed=rank % 3 != 2,
                              part="tune" if digit % 2 == 0 else "report"))
    return sorted(items, key=lambda item: item.name)


def _corpus(limit: int, groups: str = "", exclude_groups: str = "") -> list[Item]:
    from bench import crop_corpus

    items = split([(photo.name, photo.group, photo.path) for photo in crop_corpus.photos()])
    include = tuple(prefix for prefix in groups.split(",") if prefix)
    exclude = tuple(prefix for prefix in exclude_groups.split(",") if prefix)
    items = [item for item in items if (not include or item.group.startswith(include))
             and not (exclude and item.group.startswith(exclude))]
    if limit:
        # A spread of groups: the first ``limit`` by hash, not by name.
        items = sorted(items, key=lambda item: hashlib.sha256(item.name.encode()).hexdigest())[:limit]
        items.sort(key=lambda item: item.name)
    return items


def _smoke_corpus(directory: Path) -> list[Item]:
    """Eight generated "photos" in two groups (no download): smooth random fields with
    shapes, distinct per photo."""
    photos = []
    for number in range(8):
        rng = np.random.default_rng(1000 + number)
        low = rng.random((6, 8, 3))
        coarse = Image.fromarray((low * 255).astype(np.uint8))
        field_ = np.asarray(coarse.resize((640, 480), Image.Resampling.BICUBIC))
        noise = rng.normal(0, 12, field_.shape)
        picture = Image.fromarray(np.clip(field_ + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(25):
            x, y = int(rng.integers(0, 600)), int(rng.integers(0, 440))
            size = int(rng.integers(10, 80))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.integers(2):
                draw.ellipse((x, y, x + size, y + size), fill=colour)
            else:
                draw.rectangle((x, y, x + size, y + size // 2), fill=colour, outline=(0, 0, 0))
        path = directory / f"smoke-{number}.jpg"
        picture.save(path, "JPEG", quality=90)
        photos.append((f"smoke-{number // 4}--{number}", f"smoke-{number // 4}", path))
    return split(photos)


def _load_original(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
    return picture


def _make_queries(job: tuple[str, str, list[str]]) -> tuple[str, list[tuple[str, bytes]]]:
    """Worker: every query of one photo (runs in a separate process)."""
    name, path, transforms = job
    original = _load_original(Path(path))
    return name, [(transform, edit(original, name, transform)) for transform in transforms]


# --- methods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One reported hit, whatever produced it."""

    filepath: str
    score: float
    distance: float | None = None
    inliers: int | None = None
    found_by: tuple[str, ...] = ()


def _hits(matches: Sequence[Any]) -> list[Hit]:
    hits = []
    for match in matches:
        inliers = getattr(match, "inliers", None)
        hits.append(Hit(filepath=match.filepath, score=float(match.score),
                        distance=getattr(match, "distance", None),
                        inliers=int(inliers) if inliers is not None else None,
                        found_by=tuple(getattr(match, "found_by", ()) or ())))
    return hits


def knows_local_features() -> bool:
    """Whether match has the MATCH_LOCAL_FEATURES setting (issue 10)."""
    from match import config

    return any(setting.name == "MATCH_LOCAL_FEATURES" for setting in config.SETTINGS)


class MatchMethod:
    """match.service.search on its own fresh embedded store."""

    def __init__(self, data_dir: Path, overrides: dict[str, Any]) -> None:
        from match import config, store

        self.settings = config.load({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(data_dir),
                                     "MATCH_THUMBNAILS": False, **overrides}, environ={})
        self.store = store.open_store(self.settings)
        self.add_seconds: list[float] = []

    def add(self, filepath: str, data: bytes) -> None:
        """Index one original."""
        from match import service

        started = time.perf_counter()
        service.add(self.store, self.settings, filepath=filepath, data=data)
        self.add_seconds.append(time.perf_counter() - started)

    def search(self, data: bytes) -> list[Hit]:
        """The reported hits for ``data``, best first."""
        from match import service

        return _hits(service.search(self.store, self.settings, data))


class PhashMethod:
    """imagehash pHash, nearest indexed original within a Hamming threshold."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.names: list[str] = []
        self.hashes: list[np.ndarray] = []
        self.add_seconds: list[float] = []

    def add(self, filepath: str, data: bytes) -> None:
        """Index one original."""
        started = time.perf_counter()
        self.names.append(filepath)
        self.hashes.append(base_quality._phash(data))
        self.add_seconds.append(time.perf_counter() - started)

    def search(self, data: bytes) -> list[Hit]:
        """The nearest original when within the threshold (64 - distance as score)."""
        stored = np.stack(self.hashes)
        distances = (stored != base_quality._phash(data)[np.newaxis, :]).sum(axis=1)
        best = int(np.argmin(distances))
        if distances[best] > self.threshold:
            return []
        return [Hit(self.names[best], score=100.0 * (1 - distances[best] / 64),
                    distance=float(distances[best]), found_by=("phash",))]


# --- the run ---------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of one (method, transform)."""

    queries: int = 0
    top1: int = 0
    found: int = 0
    wrong: int = 0
    negatives: int = 0
    false_positives: int = 0
    inliers_true: list[int] = field(default_factory=list)
    inliers_wrong: list[int] = field(default_factory=list)

    def figures(self) -> dict[str, float | int]:
        """Percentages (NaN when there were no queries of the kind)."""
        def pct(count: int, total: int) -> float:
            return 100.0 * count / total if total else float("nan")
        return {"R@1": pct(self.top1, self.queries), "R@thr": pct(self.found, self.queries),
                "wrong": pct(self.wrong, self.queries), "FP": pct(self.false_positives, self.negatives),
                "queries": self.queries, "negatives": self.negatives}


@dataclass
class DistanceRow:
    """For --dump-distances: one query's signature distances."""

    name: str
    transform: str
    indexed: bool
    true_distance: float
    nearest_wrong: float
    nearest_wrong_name: str
    true_inliers: int | None
    wrong_inliers: int | None
    #: Per method: "top1", "found" (in the hits, not first), "wrong" (only other images) or "none".
    outcome: str = ""
    #: What found the true original in the fused (else Goldberg) hits, e.g. "signature+features".
    found_by: str = ""


def _tally(tally: Tally, item: Item, hits: list[Hit]) -> None:
    if item.indexed:
        tally.queries += 1
        tally.top1 += bool(hits) and hits[0].filepath == item.name
        tally.found += any(hit.filepath == item.name for hit in hits)
        tally.wrong += any(hit.filepath != item.name for hit in hits)
        tally.inliers_true.extend(hit.inliers for hit in hits
                                  if hit.filepath == item.name and hit.inliers is not None)
        wrong = [hit.inliers for hit in hits if hit.filepath != item.name and hit.inliers is not None]
        if wrong:
            tally.inliers_wrong.append(max(wrong))
    else:
        tally.negatives += 1
        tally.false_positives += bool(hits)
        wrong = [hit.inliers for hit in hits if hit.inliers is not None]
        if wrong:
            tally.inliers_wrong.append(max(wrong))


def _queries(items: Sequence[Item], transforms: list[str],
             workers: int) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    jobs = [(item.name, str(item.path), transforms) for item in items]
    if workers <= 0:
        yield from map(_make_queries, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_make_queries, jobs, chunksize=1)


def _fmt(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{value:5.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("tune", "report", "all"), default="report")
    parser.add_argument("--limit", type=int, default=0, help="use only N photos (a spread of groups)")
    parser.add_argument("--groups", default="", help="only groups starting with these (comma-separated)")
    parser.add_argument("--exclude-groups", default="", help="leave out groups starting with these")
    parser.add_argument("--transforms", default="", help="comma-separated names (default: all)")
    parser.add_argument("--methods", default="goldberg,fused,phash")
    parser.add_argument("--phash-threshold", type=int, default=10)
    parser.add_argument("--json", dest="json_out", default="", help="write the figures to this file")
    parser.add_argument("--dump-distances", action="store_true",
                        help="print true/nearest-wrong signature distances (and inliers) per transform")
    parser.add_argument("--dump-out", default="", help="with --dump-distances: one TSV row per query")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that build the edited queries (0: in this process)")
    parser.add_argument("--smoke", action="store_true", help="tiny run on generated images (CI)")
    args = parser.parse_args(argv)

    transforms = [t.strip() for t in args.transforms.split(",") if t.strip()] or list(TRANSFORMS)
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        parser.error(f"unknown transforms {unknown}; known: {', '.join(TRANSFORMS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(methods) - {"goldberg", "fused", "phash"}:
        parser.error("methods are goldberg, fused, phash")
    local_features = knows_local_features()
    if "fused" in methods and not local_features:
        print("fused: skipped, this match has no MATCH_LOCAL_FEATURES setting (it would be goldberg)")
        methods.remove("fused")

    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="crop-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:
            items = _smoke_corpus(tmp)
            if not args.transforms:
                transforms = ["identity", "crop 15% each side", "rotation 15", "screenshot 60%"]
            args.part = "all"
            args.workers = 0
        else:
            items = _corpus(args.limit, args.groups, args.exclude_groups)
        indexed = [item for item in items if item.indexed]
        queried = [item for item in items if args.part in ("all", item.part)]
        groups = sorted({item.group for item in items})
        print(f"{len(items)} photos in {len(groups)} groups; {len(indexed)} indexed (both parts), "
              f"{len(items) - len(indexed)} negatives; part {args.part}: "
              f"{sum(i.indexed for i in queried)} indexed and {sum(not i.indexed for i in queried)} "
              f"negative photos queried x {len(transforms)} transforms")

        runners: dict[str, MatchMethod | PhashMethod] = {}
        for method in methods:
            if method == "goldberg":
                overrides: dict[str, Any] = {"MATCH_LOCAL_FEATURES": False} if local_features else {}
                runners[method] = MatchMethod(tmp / "goldberg", overrides)
            elif method == "fused":
                runners[method] = MatchMethod(tmp / "fused", {})
            else:
                runners[method] = PhashMethod(args.phash_threshold)
        started = time.perf_counter()
        originals: dict[str, bytes] = {}
        for item in indexed:
            data = item.path.read_bytes()
            originals[item.name] = data
            for runner in runners.values():
                runner.add(item.name, data)
        for method, runner in runners.items():
            seconds = sum(runner.add_seconds)
            print(f"  indexed with {method}: {len(runner.add_seconds) / seconds:.1f} images/s")
        print(f"indexing took {time.perf_counter() - started:.0f} s")

        signer = _Signer(originals) if args.dump_distances else None
        tallies = {(m, t): Tally() for m in runners for t in transforms}
        group_tallies = {(m, g): Tally() for m in runners for g in groups}
        latencies: dict[str, list[float]] = {m: [] for m in runners}
        rows: list[DistanceRow] = []
        by_name = {item.name: item for item in queried}
        started = time.perf_counter()
        for done, (name, queries) in enumerate(_queries(queried, transforms, args.workers), 1):
            item = by_name[name]
            for transform, data in queries:
                method_hits: dict[str, list[Hit]] = {}
                for method, runner in runners.items():
                    began = time.perf_counter()
                    hits = runner.search(data)
                    latencies[method].append((time.perf_counter() - began) * 1000.0)
                    method_hits[method] = hits
                    _tally(tallies[method, transform], item, hits)
                    _tally(group_tallies[method, item.group], item, hits)
                if signer is not None:
                    rows.append(signer.row(item, transform, data, method_hits))
            if done % 20 == 0:
                print(f"  {done}/{len(queried)} photos queried, {time.perf_counter() - started:.0f} s",
                      flush=True)

    results = _report(tallies, latencies, methods=list(runners), transforms=transforms)
    results["groups"] = _report_groups(group_tallies, methods=list(runners), groups=groups)
    if signer is not None:
        _dump(rows, transforms, args.dump_out)
    if args.json_out:
        payload = {"machine": common.machine(), "part": args.part, "photos": len(items),
                   "groups": sorted({item.group for item in items}),
                   "indexed": len(indexed), "phash_threshold": args.phash_threshold,
                   "argv": sys.argv[1:] if argv is None else list(argv), **results}
        Path(args.json_out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def _report_groups(tallies: dict[tuple[str, str], Tally], *, methods: list[str],
                   groups: list[str]) -> dict[str, Any]:
    """Per group, all transforms together: where the misses and false hits come from."""
    print("\nper group, all transforms: R@thr / wrong / FP (%), queries / negative queries")
    for method in methods:
        print(f"  {method}:")
        for group in groups:
            f = tallies[method, group].figures()
            print(f"    {group:34s} R@thr {_fmt(float(f['R@thr']))}  wrong {_fmt(float(f['wrong']))}  "
                  f"FP {_fmt(float(f['FP']))}   ({f['queries']} / {f['negatives']})")
    return {f"{m}|{g}": tallies[m, g].figures() for m in methods for g in groups}


def _report(tallies: dict[tuple[str, str], Tally], latencies: dict[str, list[float]], *,
            methods: list[str], transforms: list[str]) -> dict[str, Any]:
    figures = {f"{m}|{t}": tallies[m, t].figures() for m in methods for t in transforms}
    print("\nper transform: R@1 / R@thr / wrong-image hits (% of queries of indexed photos); "
          "FP (% of negative queries with any hit)\n")
    print("| transform | " + " | ".join(f"{m} R@1 | R@thr | wrong | FP" for m in methods) + " |")
    print("| --- |" + " ---: |" * (4 * len(methods)))
    totals = {m: Tally() for m in methods}

    def cells(tally: Tally) -> str:
        f = tally.figures()
        return " | ".join(_fmt(float(f[key])) for key in ("R@1", "R@thr", "wrong", "FP"))

    for transform in transforms:
        print(f"| {transform} | " + " | ".join(cells(tallies[m, transform]) for m in methods) + " |")
        for method in methods:
            tally, total = tallies[method, transform], totals[method]
            for attribute in ("queries", "top1", "found", "wrong", "negatives", "false_positives"):
                setattr(total, attribute, getattr(total, attribute) + getattr(tally, attribute))
    print("| **all** | " + " | ".join(cells(totals[m]) for m in methods) + " |")
    queries = {t: tallies[methods[0], t].queries for t in transforms} if methods else {}
    negatives = {t: tallies[methods[0], t].negatives for t in transforms} if methods else {}
    if methods:
        print(f"(per transform: {max(queries.values())} queries of indexed photos, "
              f"{max(negatives.values())} negative queries)")
    print("\nsearch latency per call (signing included):")
    latency = {}
    for method in methods:
        summary = common.summary(latencies[method])
        latency[method] = {"p50": summary["p50"], "p99": summary["p99"], "samples": summary["samples"]}
        print(f"  {method:9s} p50 {summary['p50']:7.1f} ms   p99 {summary['p99']:7.1f} ms   "
              f"({summary['samples']} searches)")
    return {"figures": figures, "totals": {m: totals[m].figures() for m in methods}, "latency_ms": latency}


class _Signer:
    """Signature distances of a query to every indexed original (8 orientations)."""

    def __init__(self, originals: dict[str, bytes]) -> None:
        from match import config, service

        self.settings = config.load({"MATCH_STORE": "local"}, environ={})
        self.names = list(originals)
        self.stored = np.stack([service.sign(data, self.settings).signature for data in originals.values()])

    def row(self, item: Item, transform: str, data: bytes, method_hits: dict[str, list[Hit]]) -> DistanceRow:
        """The true and nearest-wrong distances of one query (and inliers from the hits)."""
        from match import service, signature

        queries = service.sign(data, self.settings, all_orientations=True).signatures
        distances = signature.distances(np.asarray(queries), self.stored).min(axis=0)
        true = float("nan")
        if item.indexed:
            own = self.names.index(item.name)
            true = float(distances[own])
            distances = distances.copy()
            distances[own] = np.inf
        nearest = int(np.argmin(distances))
        hits = method_hits.get("fused") or method_hits.get("goldberg") or []
        true_inliers = next((h.inliers for h in hits
                             if h.filepath == item.name and h.inliers is not None), None)
        wrong = [h.inliers for h in hits if h.filepath != item.name and h.inliers is not None]
        own_hit = next((h for h in hits if h.filepath == item.name), None)
        return DistanceRow(item.name, transform, item.indexed, true, float(distances[nearest]),
                           self.names[nearest], true_inliers, max(wrong) if wrong else None,
                           outcome=",".join(f"{method}={_outcome(item, found)}"
                                            for method, found in method_hits.items()),
                           found_by="+".join(own_hit.found_by) if own_hit is not None else "")


def _outcome(item: Item, hits: list[Hit]) -> str:
    if not hits:
        return "none"
    if hits[0].filepath == item.name:
        return "top1"
    return "found" if any(hit.filepath == item.name for hit in hits) else "wrong"


def _quantiles(values: list[float], qs: Sequence[float]) -> str:
    if not values:
        return " ".join("  n/a" for _ in qs)
    return " ".join(f"{np.quantile(values, q):5.3f}" for q in qs)


def _dump(rows: list[DistanceRow], transforms: list[str], out: str) -> None:
    print("\nsignature distances (8 orientations, min), queries of indexed photos:")
    print(f"{'transform':22s} | true original p50 p90 p95 max      | nearest wrong min p1 p5 p50"
          f"          | negatives' nearest min p5 p50")
    for transform in transforms:
        mine = [r for r in rows if r.transform == transform]
        true = [r.true_distance for r in mine if r.indexed]
        wrong = [r.nearest_wrong for r in mine if r.indexed]
        negative = [r.nearest_wrong for r in mine if not r.indexed]
        print(f"{transform:22s} | {_quantiles(true, (0.5, 0.9, 0.95, 1.0))} | "
              f"{_quantiles(wrong, (0.0, 0.01, 0.05, 0.5))} | {_quantiles(negative, (0.0, 0.05, 0.5))}")
    true_all = np.array([r.true_distance for r in rows if r.indexed])
    wrong_all = np.array([r.nearest_wrong for r in rows])
    print("\nshare at or below a distance: true originals (all transforms) vs nearest wrong images "
          "(all queries, negatives included)")
    for cut in np.arange(0.10, 0.651, 0.05):
        true_share = 100 * np.mean(true_all <= cut) if len(true_all) else float("nan")
        wrong_share = 100 * np.mean(wrong_all <= cut) if len(wrong_all) else float("nan")
        print(f"  <= {cut:.2f}: true {true_share:5.1f}%   wrong {wrong_share:5.1f}%")
    closest = sorted((r for r in rows), key=lambda r: r.nearest_wrong)[:10]
    print("closest wrong pairs: " + "; ".join(f"{r.name} [{r.transform}] -> {r.nearest_wrong_name} "
                                              f"{r.nearest_wrong:.3f}" for r in closest))
    true_inliers = [r.true_inliers for r in rows if r.true_inliers is not None]
    wrong_inliers = [r.wrong_inliers for r in rows if r.wrong_inliers is not None]
    if true_inliers or wrong_inliers:
        print("\ninliers reported: true original's hit p5/p50 "
              f"{_quantiles([float(v) for v in true_inliers], (0.05, 0.5))}; most inliers of a wrong hit "
              f"max/p99 {_quantiles([float(v) for v in wrong_inliers], (1.0, 0.99))} "
              f"({len(wrong_inliers)} queries with a wrong hit that has inliers)")
        for transform in transforms:
            mine = [r for r in rows if r.transform == transform]
            ti = [float(r.true_inliers) for r in mine if r.true_inliers is not None]
            wi = [float(r.wrong_inliers) for r in mine if r.wrong_inliers is not None]
            print(f"  {transform:22s} true p5/p50 {_quantiles(ti, (0.05, 0.5))}  "
                  f"wrong max {_quantiles(wi, (1.0,))}")
    if out:
        with open(out, "w") as handle:
            handle.write("name\ttransform\tindexed\ttrue_distance\tnearest_wrong\tnearest_wrong_name"
                         "\ttrue_inliers\twrong_inliers\toutcome\tfound_by\n")
            for r in rows:
                handle.write(f"{r.name}\t{r.transform}\t{int(r.indexed)}\t{r.true_distance:.4f}\t"
                             f"{r.nearest_wrong:.4f}\t{r.nearest_wrong_name}\t"
                             f"{'' if r.true_inliers is None else r.true_inliers}\t"
                             f"{'' if r.wrong_inliers is None else r.wrong_inliers}\t"
                             f"{r.outcome}\t{r.found_by}\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
