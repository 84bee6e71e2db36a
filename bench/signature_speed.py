"""Signing speed: match vs image-match 1.1.2 vs decoding alone, on the same JPEG bytes.

Not a test (tests/test_signature.py keeps a 3x floor): it prints the figures
docs/signatures.md and BENCHMARKS.md quote. It needs image-match 1.1.2 and
scikit-image (the test extras) and the photo corpus of ``tests/photos.py``::

    python -m bench.signature_speed [--runs 30] [--sizes 640x480 1024x768 1600x1200] [--photos 5]
    python -m bench.signature_speed --smoke      # CI: one small size, 2 rounds

It runs on one core: the process pins itself to one CPU (``sched_setaffinity``) and
sets ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to 1 before
numpy loads (``--all-cores`` skips both).

For each size, ``--photos`` real photographs are resized to it and saved at quality 90
(0.3, 0.8 and 1.9 megapixels by default). Each round times every contender on every
photo, in turn, so a busy machine slows them alike; it prints the median over
``--runs`` rounds, the best round (the figure with the least noise from other
processes), and the median of the ratios taken within each round (the steadiest
ratio on a busy machine). Contenders:

* ``decode``: Pillow alone, ``Image.open(...).load()`` -- the floor.
* ``decode+array``: :func:`match.image.load_rgb` (decode, RGB, numpy array).
* ``match``: ``signature.generate(image.load_rgb(data))`` -- what match does.
* ``match (grey input)``: ``signature.generate(image.load_grey(data))``, the
  whole-grey-image path (skimage's float64 conversion of every pixel).
* ``match, 8 orientations``: ``signature.generate_all(image.load_rgb(data))``.
* ``draft decode + match``: Pillow's draft mode (JPEG DCT scaling to the smallest
  scale with a short side of at least 240 pixels) then match's signature. Not what
  match does: it changes the signature, so the script also prints the distance
  between the draft signature and the exact one, and whether it stays under the
  cutoff.
* ``image-match``: ``ImageSignature().generate_signature(data, bytestream=True)``.

It also checks that match's and image-match's signatures are identical, photo by photo.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

if __name__ == "__main__" and "--all-cores" not in sys.argv:
    # One core: before numpy (and its BLAS) is imported.
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = "1"
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import numpy as np  # noqa: E402
from image_match.goldberg import ImageSignature  # noqa: E402
from PIL import Image  # noqa: E402

from match import image, signature  # noqa: E402
from tests.photos import photos  # noqa: E402

#: Draft mode decodes at the smallest DCT scale keeping at least this short side.
DRAFT_SIDE = 240


def _jpeg(size: tuple[int, int], index: int = 0) -> bytes:
    picture = Image.open(photos()[index]).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def draft_rgb(data: bytes) -> np.ndarray:
    """RGB pixels decoded with Pillow's JPEG draft mode (DCT scaling: 1/2, 1/4, 1/8)."""
    with Image.open(io.BytesIO(data)) as picture:
        scale = max(1, min(picture.width, picture.height) // DRAFT_SIDE)
        picture.draft("RGB", (picture.width // scale, picture.height // scale))
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()


def bench_size(width: int, height: int, photo_count: int, runs: int) -> bool:
    """Time every contender on ``photo_count`` photos at one size; True if identical."""
    datas = [_jpeg((width, height), index) for index in range(photo_count)]
    oracle = ImageSignature()

    def image_match(data: bytes) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return oracle.generate_signature(data, bytestream=True)

    per_image: dict[str, Callable[[bytes], object]] = {
        "decode": _decode,
        "decode+array": image.load_rgb,
        "match": lambda data: signature.generate(image.load_rgb(data)),
        "match (grey input)": lambda data: signature.generate(image.load_grey(data)),
        "match, 8 orientations": lambda data: signature.generate_all(image.load_rgb(data)),
        "draft decode + match": lambda data: signature.generate(draft_rgb(data)),
        "image-match": image_match,
    }
    identical = all(np.array_equal(signature.generate(image.load_rgb(data)), image_match(data))
                    for data in datas)
    drafts = [signature.distance(signature.generate(draft_rgb(data)),
                                 signature.generate(image.load_rgb(data))) for data in datas]
    times: dict[str, list[float]] = {name: [] for name in per_image}
    for function in per_image.values():  # warm-up
        function(datas[0])
    for _ in range(runs):
        for name, function in per_image.items():
            start = time.perf_counter()
            for data in datas:
                function(data)
            times[name].append((time.perf_counter() - start) / len(datas))
    megapixels = width * height / 1e6
    print(f"\n## {width}x{height} ({megapixels:.2f} MP), {len(datas)} photos, "
          f"{sum(map(len, datas)) // len(datas):,} bytes on average, {runs} interleaved rounds")
    print(f"signatures identical to image-match: {identical} ({len(datas)} photos)")
    print(f"draft mode: distance to the exact signature mean {statistics.fmean(drafts):.3f}, "
          f"max {max(drafts):.3f} (cutoff {signature.DEFAULT_CUTOFF})")
    for label, statistic in (("median", statistics.median), ("best", min)):
        figure = {name: statistic(values) for name, values in times.items()}
        print(f"\n{label:<24}{'ms':>9}{'images/s':>11}{'vs image-match':>16}{'vs decode':>11}")
        for name, seconds in figure.items():
            print(f"{name:<24}{seconds * 1000:>9.2f}{1 / seconds:>11.1f}"
                  f"{figure['image-match'] / seconds:>15.2f}x{seconds / figure['decode']:>10.2f}x")
    # Ratios within each round, then their median: the steadiest figure on a busy machine.
    print(f"\n{'per-round ratio, median':<24}{'':>9}{'':>11}{'vs image-match':>16}{'vs decode':>11}")
    for name, values in times.items():
        versus_oracle = statistics.median(o / v for o, v in zip(times["image-match"], values, strict=True))
        versus_decode = statistics.median(v / d for v, d in zip(values, times["decode"], strict=True))
        print(f"{name:<24}{'':>9}{'':>11}{versus_oracle:>15.2f}x{versus_decode:>10.2f}x")
    return identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1024x768", "1600x1200"],
                        help="WIDTHxHEIGHT ... (default 640x480 1024x768 1600x1200)")
    parser.add_argument("--size", dest="sizes", action="store", type=lambda v: [v],
                        help="one WIDTHxHEIGHT (as --sizes)")
    parser.add_argument("--photos", type=int, default=5, help="photos per size (default 5)")
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.photos, args.runs = ["320x240"], 1, 2
    print(f"CPU affinity {sorted(os.sched_getaffinity(0))}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    identical = True
    for size in args.sizes:
        width, height = (int(side) for side in size.split("x"))
        identical &= bench_size(width, height, args.photos, args.runs)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
