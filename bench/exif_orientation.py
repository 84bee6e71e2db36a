"""Does applying EXIF orientation help sideways phone photos match? The measurement
behind match.image's default (docs/signatures.md quotes its output)::

    python -m bench.exif_orientation
    python -m bench.exif_orientation --smoke     # CI: 3 photos

For every photo of the corpus (``tests/photos.py``) it makes the file a phone writes:
the pixels stored rotated 90 degrees (orientation tag 6, "rotate 90 cw to display",
so it displays upright), JPEG quality 95 -- and the upright copy the same photo
becomes once an app or a screenshot re-saves it as displayed: plain pixels, no tag,
JPEG quality 90. It signs both, ignoring the tag (image-match's behaviour) and
applying it, and counts the pairs within the match cutoff (0.45): with the plain
search (one signature each) and with the 8-orientation search (``generate_all`` of
the query against the stored signature).
"""

from __future__ import annotations

import argparse
import io
import statistics

import numpy as np
from PIL import Image

from match import image, signature
from tests.photos import photos

ORIENTATION_TAG = 0x0112


def _jpeg(picture: Image.Image, quality: int, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    if exif is None:
        picture.save(buffer, "JPEG", quality=quality)
    else:
        picture.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 3 photos")
    args = parser.parse_args(argv)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    cases: dict[str, list[float]] = {
        "tag ignored, plain search": [],
        "tag ignored, 8 orientations": [],
        "tag applied, plain search": [],
        "tag applied, 8 orientations": [],
    }
    paths = photos(3 if args.smoke else None)
    for path in paths:
        upright = Image.open(path).convert("RGB")
        phone = _jpeg(upright.transpose(Image.Transpose.ROTATE_90), 95, exif)
        resaved = signature.generate(image.load_rgb(_jpeg(upright, 90)))
        for applied in (False, True):
            query = signature.generate_all(image.load_rgb(phone, exif_transpose=applied))
            distances = signature.distances(query, resaved[np.newaxis])[:, 0]
            label = "applied" if applied else "ignored"
            cases[f"tag {label}, plain search"].append(float(distances[0]))
            cases[f"tag {label}, 8 orientations"].append(float(distances.min()))
    cutoff = signature.DEFAULT_CUTOFF
    print(f"{len(paths)} photos: sideways JPEG + orientation tag vs upright re-save, cutoff {cutoff}")
    print(f"{'':<30}{'matched':>10}{'median distance':>18}{'max':>8}")
    for name, values in cases.items():
        matched = sum(value < cutoff for value in values)
        print(f"{name:<30}{matched:>6}/{len(values):<3}{statistics.median(values):>18.3f}"
              f"{max(values):>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
