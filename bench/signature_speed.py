"""Signing speed: match vs image-match 1.1.2 vs decoding alone, on the same JPEG bytes.

Not a test (tests/test_signature.py keeps a 3x floor): it prints the figures
docs/signatures.md quotes. It needs image-match 1.1.2 and scikit-image (the test
extras) and the photo corpus of ``tests/photos.py``::

    python -m bench.signature_speed [--runs 30] [--size 1600x1200]

The JPEG is a real photograph resized to ``--size`` and saved at quality 90. Each
round times every contender once, in turn, so a busy machine slows them alike; it
prints the median over ``--runs`` rounds and the best round (the figure with the
least noise from other processes). Contenders:

* ``decode``: Pillow alone, ``Image.open(...).load()`` -- the floor.
* ``decode+array``: :func:`match.image.load_rgb` (decode, RGB, numpy array).
* ``match``: ``signature.generate(image.load_rgb(data))`` -- what match does.
* ``match (grey input)``: ``signature.generate(image.load_grey(data))``, the
  whole-grey-image path (skimage's float64 conversion of every pixel).
* ``match, 8 orientations``: ``signature.generate_all(image.load_rgb(data))``.
* ``image-match``: ``ImageSignature().generate_signature(data, bytestream=True)``.

It also checks that match's and image-match's signatures are identical.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
from image_match.goldberg import ImageSignature
from PIL import Image

from match import image, signature
from tests.photos import photos


def _jpeg(size: tuple[int, int]) -> bytes:
    picture = Image.open(photos()[0]).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--size", default="1600x1200", help="WIDTHxHEIGHT (default 1600x1200)")
    args = parser.parse_args()
    width, height = (int(side) for side in args.size.split("x"))
    data = _jpeg((width, height))
    oracle = ImageSignature()

    def image_match() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return oracle.generate_signature(data, bytestream=True)

    contenders: dict[str, Callable[[], object]] = {
        "decode": lambda: _decode(data),
        "decode+array": lambda: image.load_rgb(data),
        "match": lambda: signature.generate(image.load_rgb(data)),
        "match (grey input)": lambda: signature.generate(image.load_grey(data)),
        "match, 8 orientations": lambda: signature.generate_all(image.load_rgb(data)),
        "image-match": image_match,
    }
    identical = np.array_equal(signature.generate(image.load_rgb(data)), image_match())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for function in contenders.values():  # warm-up
        function()
    for _ in range(args.runs):
        for name, function in contenders.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    print(f"{width}x{height} JPEG, {len(data)} bytes, {args.runs} interleaved rounds")
    print(f"signatures identical to image-match: {identical}")
    for label, statistic in (("median", statistics.median), ("best", min)):
        figure = {name: statistic(values) for name, values in times.items()}
        print(f"\n{label:<24}{'ms':>9}{'images/s':>11}{'vs image-match':>16}{'vs decode':>11}")
        for name, seconds in figure.items():
            print(f"{name:<24}{seconds * 1000:>9.2f}{1 / seconds:>11.1f}"
                  f"{figure['image-match'] / seconds:>15.2f}x{seconds / figure['decode']:>10.2f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
