"""What found a search hit, and where: the evidence the web UI shows beside each result.

A hit confirmed by local features carries ``region``, the box ``(x0, y0, x1, y1)`` of the
stored image, in its original pixels, that the query shows (docs/local-features.md).
The pages draw it over the image's preview as an SVG overlay whose ``viewBox`` is the
image's size and whose ``preserveAspectRatio="xMidYMid meet"`` letterboxes exactly as the
preview's ``object-fit: contain`` does; the rectangle is given in percentages of the
image's width and height (:func:`box`). SVG geometry attributes are not styles, so the
page's Content-Security-Policy (``style-src 'self'``) stays as it is.

The stored image's size comes with its stored local features
(:meth:`match.store.SignatureStore.get_features`). A preview is drawn over only when it
is known to show the pixels the region refers to: our thumbnail, with the same aspect
ratio (a thumbnail applies the EXIF orientation; with ``MATCH_EXIF_TRANSPOSE`` off the
features do not, so a turned photo's box would land elsewhere: it is then given as text
only).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from match import service
from match.errors import MatchError
from match.store import Match, SignatureStore

__all__ = ["box", "same_shape", "stored_sizes", "thumbnail_sizes", "describe", "of_comparison", "image_size"]

log = logging.getLogger(__name__)


def box(region: Sequence[int], width: int, height: int) -> dict[str, float] | None:
    """``region`` as percentages of the image: ``{"x", "y", "width", "height", "area"}``.

    ``x``/``y`` are the box's left and top edges, ``width``/``height`` its size, each
    rounded to 0.01 and clipped to the image; ``area`` is the share of the image it covers
    (0-100). None when the image's size is unknown or the box is empty.
    """
    if width <= 0 or height <= 0 or len(region) != 4:
        return None
    x0, y0, x1, y1 = (float(v) for v in region)
    x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
    y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = (x1 - x0) / width, (y1 - y0) / height
    return {"x": round(100 * x0 / width, 2), "y": round(100 * y0 / height, 2),
            "width": round(100 * w, 2), "height": round(100 * h, 2), "area": round(100 * w * h, 1)}


def same_shape(shown: tuple[int, int], width: int, height: int) -> bool:
    """Whether a preview of size ``shown`` (w, h) is the ``width`` x ``height`` image
    scaled (up to the one pixel a thumbnail rounds to), not turned."""
    shown_w, shown_h = shown
    if min(shown_w, shown_h, width, height) <= 0:
        return False
    # shown_w / shown_h == width / height, each side of the preview within a pixel.
    return abs(shown_w * height - shown_h * width) <= width + height


def stored_sizes(store: SignatureStore, filepaths: Sequence[str]) -> dict[str, tuple[int, int]]:
    """filepath -> (width, height) of the stored images that have local features.

    Empty when the store cannot say (a store error is logged: the page shows the region
    as text, without the drawing).
    """
    if not filepaths:
        return {}
    try:
        found = store.get_features(list(filepaths))
    except (MatchError, NotImplementedError) as exc:
        log.warning("no image sizes for the results page: %s", exc)
        return {}
    return {path: (features.width, features.height) for path, features in found.items()}


def describe(match: Match, size: tuple[int, int] | None, preview: tuple[int, int] | None) -> dict[str, Any]:
    """The evidence of one hit for a template.

    ``found_by`` (a list), ``features`` (whether local features confirmed it), ``inliers``,
    ``region`` (a list, or None), ``size`` (the stored image's (w, h) when known) and
    ``box`` (:func:`box`, or None), drawn when ``preview`` (the size of the image shown)
    has the stored image's shape.
    """
    region = None if match.region is None else [int(v) for v in match.region]
    drawn = None
    if region is not None and size is not None:
        drawn = box(region, *size)
        if drawn is not None and (preview is None or not same_shape(preview, *size)):
            drawn = None
    return {"found_by": list(match.found_by), "features": "features" in match.found_by,
            "inliers": match.inliers, "region": region, "size": size, "box": drawn}


def image_size(data: bytes, *, exif_transpose: bool) -> tuple[int, int] | None:
    """(width, height) of image bytes as match signs them (the EXIF orientation applied
    only with ``exif_transpose``); None if Pillow can't read the header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:  # Pillow raises many types for bytes it can't read
        return None
    turned = exif_transpose and _orientation(data) in (5, 6, 7, 8)
    return (height, width) if turned else (width, height)


def _orientation(data: bytes) -> int:
    """The EXIF orientation of image bytes (1, upright, when there is none)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(0x0112, 1))
    except Exception:  # Pillow raises many types for bytes it can't read
        return 1


def thumbnail_sizes(settings: Mapping[str, Any], digests: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """filepath -> (width, height) of its thumbnail, for those that have one.

    ``digests`` maps filepaths to their metadata's ``sha256``. Reads each JPEG's header
    only.
    """
    from PIL import Image

    from match.web import thumbs

    sizes: dict[str, tuple[int, int]] = {}
    for filepath, digest in digests.items():
        if not thumbs.exists(settings, digest):
            continue
        try:
            with Image.open(thumbs.path(settings, str(digest))) as image:
                sizes[filepath] = (int(image.width), int(image.height))
        except Exception as exc:  # a thumbnail removed meanwhile, or unreadable: no drawing
            log.warning("thumbnail %s unreadable: %s", digest, exc)
    return sizes


def of_comparison(comparison: service.Comparison, second: bytes,
                  settings: Mapping[str, Any]) -> dict[str, Any]:
    """The compare page's verdict and evidence for a pair (the second image in the role
    of the stored one).

    ``same`` says whether a search with the first image would report the second, by
    the rule of docs/local-features.md: a signature distance up to
    ``MATCH_SURE_DISTANCE``, or local features confirming it (or, with them off, a
    distance up to the cutoff); ``why`` says which. ``inliers``, ``region`` and ``box``
    (over the second image's preview, which applies the EXIF orientation) as for a hit.
    """
    cutoff = float(settings["MATCH_CUTOFF"])
    on = service.local_features_on(settings)
    sure = min(float(settings.get("MATCH_SURE_DISTANCE", 0.2)), cutoff) if on else cutoff
    distance = comparison.distance
    if comparison.inliers is not None:
        same, why = True, "features"
    elif distance <= sure:
        same, why = True, "signature"
    elif distance <= cutoff:
        same, why = False, "unconfirmed"
    else:
        same, why = False, "far"
    region = None if comparison.region is None else [int(v) for v in comparison.region]
    drawn = None
    transpose = bool(settings.get("MATCH_EXIF_TRANSPOSE"))
    size = image_size(second, exif_transpose=transpose)
    # The preview applies the EXIF orientation: draw only when the region's pixels are its.
    if region is not None and size is not None and (transpose or _orientation(second) == 1):
        drawn = box(region, *size)
    return {"same": same, "why": why, "sure": sure, "inliers": comparison.inliers, "region": region,
            "size": size, "box": drawn}
