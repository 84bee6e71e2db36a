"""Match quality on real photos: recall@1 and false positives under common edits.

Not a test (tests/test_bench_smoke.py only runs ``--smoke``). It needs the photo
corpus of tests/photos.py (real photographs from Debian packages) and imagehash::

    pip install imagehash
    python -m bench.quality [--photos 119] [--cutoff 0.45] [--phash-threshold 10]

The set: each photo scaled to a long side of at most 1024 pixels and saved as a JPEG
(quality 90) is an *original*. Photos with an even index are indexed; the others are
held out. Every original is edited by each transform below (then saved as JPEG
quality 90, except ``jpeg q30``), and the edited copy is the query:

    identity, resize 50%, jpeg q30, crop 5% (5% of the width and of the height cut,
    at a random place), rotation 90, mirror, brightness +30%, Gaussian blur (radius 2),
    grayscale, text watermark (a line of text across the lower part)

* recall@1: for a query made from an indexed photo, the best hit is its original;
* false-positive rate: for a query made from a held-out photo (whose original is not
  indexed), the share of queries that return any hit at all.

Methods (every one signs with match's signature, which is image-match's bit for bit;
they differ in which stored images are candidates and which query orientations):

* ``image-match words``: image-match 1.1.2's own search, simulated exactly:
  ``search_image(all_orientations=True)`` queries the 6 distinct transforms its
  ``product(...)`` yields (identity, colour inversion ``-x``, rot90, rot180, rot270,
  fliplr; the signature of ``-x`` is minus the signature of ``x``), each one's
  candidates are the records sharing at least one of the 63 words at the same
  position (its ``bool should`` of ``term`` queries: with fewer records than its
  ``size`` = 100, that is all of them), kept when the distance is below the cutoff.
* ``match words``: match's word query: the 8 orientations of
  :func:`match.signature.generate_all`, candidates sharing a word with any of them.
* ``match words + kNN``: plus the ``MATCH_ES_CANDIDATES`` (100) nearest signatures in
  l2 per orientation (what the kNN search returns; exact here).
* ``exhaustive``: every stored signature (what the embedded store does).
* ``pHash``: imagehash's ``phash`` (64 bits), a hit when the Hamming distance is at
  most ``--phash-threshold``; one orientation, as users of it do.

Caveat: the index is small (~60 photos), so the candidate limits of the word and kNN
searches never bind here; bench/es_recall.py measures candidate recall at 10k+.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from bench import common
from match import image, signature

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]
LONG_SIDE = 1024


def _crop(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = picture.size
    w, h = int(width * 0.95), int(height * 0.95)
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return picture.crop((x, y, x + w, y + h))


def _watermark(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    picture = picture.convert("RGB")
    draw = ImageDraw.Draw(picture, "RGBA")
    size = max(12, picture.height // 12)
    font = ImageFont.load_default(size=size)
    draw.text((picture.width // 20, picture.height * 3 // 4), "(c) match-bench 2026 stock photo",
              fill=(255, 255, 255, 180), font=font, stroke_width=1, stroke_fill=(0, 0, 0, 180))
    return picture


TRANSFORMS: dict[str, Transform] = {
    "identity": lambda p, r: p,
    "resize 50%": lambda p, r: p.resize((p.width // 2, p.height // 2), Image.Resampling.LANCZOS),
    "jpeg q30": lambda p, r: p,  # saved at quality 30 below
    "crop 5%": _crop,
    "rotation 90": lambda p, r: p.transpose(Image.Transpose.ROTATE_90),
    "mirror": lambda p, r: p.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "brightness +30%": lambda p, r: ImageEnhance.Brightness(p).enhance(1.3),
    "blur r2": lambda p, r: p.filter(ImageFilter.GaussianBlur(2)),
    "grayscale": lambda p, r: ImageOps.grayscale(p).convert("RGB"),
    "watermark": _watermark,
}


def _phash(data: bytes) -> np.ndarray:
    import imagehash

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(imagehash.phash(picture).hash, dtype=bool).ravel()


def _image_match_queries(all8: np.ndarray) -> np.ndarray:
    """image-match's all_orientations set: identity, -x, rot90, rot180, rot270, fliplr."""
    return np.stack([all8[0], -all8[0], all8[1], all8[2], all8[3], all8[4]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=0, help="how many photos (default: all)")
    parser.add_argument("--cutoff", type=float, default=signature.DEFAULT_CUTOFF)
    parser.add_argument("--candidates", type=int, default=100, help="kNN candidates per orientation")
    parser.add_argument("--phash-threshold", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 6 photos")
    args = parser.parse_args(argv)
    if args.smoke:
        args.photos = 6
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.1f}")
    paths = common.photo_paths(args.photos or None)
    rng = np.random.default_rng(0)
    originals = []
    for path in paths:
        with Image.open(path) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
            originals.append(picture)
    indexed = list(range(0, len(originals), 2))
    held_out = list(range(1, len(originals), 2))

    # The index: originals of the indexed photos, as uploaded (JPEG q90).
    stored_bytes = [common.jpeg_bytes(originals[i]) for i in indexed]
    stored = np.stack([signature.generate(image.load_rgb(data)) for data in stored_bytes])
    stored_words = signature.words(stored)
    stored_f = stored.astype(np.float32)
    stored_phash = np.stack([_phash(data) for data in stored_bytes])

    def word_candidates(queries: np.ndarray) -> np.ndarray:
        query_words = signature.words(queries)  # (k, 63)
        shared = (stored_words[np.newaxis, :, :] == query_words[:, np.newaxis, :]).any(axis=2)
        return shared.any(axis=0)

    def knn_candidates(queries: np.ndarray) -> np.ndarray:
        chosen = np.zeros(len(stored), dtype=bool)
        for query in queries.astype(np.float32):
            l2 = np.linalg.norm(stored_f - query, axis=1)
            chosen[np.argsort(l2, kind="stable")[:args.candidates]] = True
        return chosen

    def best(queries: np.ndarray, candidates: np.ndarray, strict: bool = False) -> int | None:
        """Index (into ``indexed``) of the best hit within the cutoff, or None."""
        if not candidates.any():
            return None
        distances = signature.distances(queries, stored).min(axis=0)
        distances[~candidates] = np.inf
        hit = int(np.argmin(distances))
        within = distances[hit] < args.cutoff if strict else distances[hit] <= args.cutoff
        return hit if within else None

    methods: dict[str, Callable[[np.ndarray, np.ndarray], int | None]] = {
        "image-match words": lambda all8, ph: best(_image_match_queries(all8),
                                                   word_candidates(_image_match_queries(all8)), strict=True),
        "match words": lambda all8, ph: best(all8, word_candidates(all8)),
        "match words + kNN": lambda all8, ph: best(all8, word_candidates(all8) | knn_candidates(all8)),
        "exhaustive": lambda all8, ph: best(all8, np.ones(len(stored), dtype=bool)),
        "pHash": lambda all8, ph: _phash_best(ph, stored_phash, args.phash_threshold),
    }
    hits = {(m, t): [0, 0] for m in methods for t in TRANSFORMS}      # recall@1: [right, queries]
    false = {(m, t): [0, 0] for m in methods for t in TRANSFORMS}     # FP: [any hit, queries]
    for number, original in enumerate(originals):
        for name, transform in TRANSFORMS.items():
            edited = transform(original, rng)
            data = common.jpeg_bytes(edited, quality=30 if name == "jpeg q30" else 90)
            all8 = signature.generate_all(image.load_rgb(data))
            query_phash = _phash(data)
            for method, run in methods.items():
                found = run(all8, query_phash)
                if number in indexed:
                    tally = hits[method, name]
                    tally[0] += found is not None and indexed[found] == number
                else:
                    tally = false[method, name]
                    tally[0] += found is not None
                tally[1] += 1
    print(f"\n{len(indexed)} indexed photos, {len(held_out)} held out; cutoff {args.cutoff}, "
          f"pHash Hamming <= {args.phash_threshold}")
    for title, tallies in (("recall@1 (indexed photos)", hits),
                           ("false-positive rate (held-out photos)", false)):
        rows = []
        for name in TRANSFORMS:
            rows.append([name] + [f"{tallies[m, name][0] / max(1, tallies[m, name][1]):.1%}"
                                  for m in methods])
        overall = [sum(tallies[m, t][0] for t in TRANSFORMS)
                   / max(1, sum(tallies[m, t][1] for t in TRANSFORMS)) for m in methods]
        rows.append(["**all**"] + [f"{value:.1%}" for value in overall])
        print(f"\n{title}")
        print(common.table(rows, ["transform", *methods]))
    return 0


def _phash_best(query: np.ndarray, stored: np.ndarray, threshold: int) -> int | None:
    distances = (stored != query).sum(axis=1)
    hit = int(np.argmin(distances))
    return hit if distances[hit] <= threshold else None


if __name__ == "__main__":
    raise SystemExit(main())
