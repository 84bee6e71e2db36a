"""Local features: ORB keypoints, visual words and spatial verification. No I/O.

The Goldberg signature (:mod:`match.signature`) describes the whole frame on a 9x9
grid, so it moves with the frame: crop 15% off each side, add a border or paste the
picture into a screenshot and the signature is another image's. Local features do
not care about the frame. This module is the second signal of a search, after the
design of Philbin et al., "Object retrieval with large vocabularies and fast spatial
matching" (CVPR 2007), and of the open-source index pastec:

1. **Extract** (:func:`extract`): OpenCV's ORB (Rublee et al., ICCV 2011; free to
   use) finds keypoints on a grey copy whose long side is at most
   :data:`DETECT_SIDE` pixels, so a large upload costs what a small one does. A
   stored image keeps at most :data:`STORED_KEYPOINTS` of them, picked spread over
   the picture (the strongest of each cell of a grid in turn), so any large enough
   part of it keeps its share; a query keeps up to :data:`QUERY_KEYPOINTS`.
2. **Quantize** (:func:`match.vocabulary.Vocabulary.words`): each 256-bit descriptor
   becomes a visual word, a leaf of a vocabulary tree (Nister and Stewenius, CVPR
   2006) trained on real photographs and shipped with the package. The words are
   what a store indexes: terms of a keyword field in Elasticsearch, an inverted table
   in the embedded store. Candidates are the stored images sharing the most
   (idf-weighted) words with the query.
3. **Verify** (:func:`verify`): unlike pastec, which fits on word correspondences
   alone, a stored image keeps its descriptors (32 bytes a keypoint) and positions,
   so each candidate is checked on real descriptor matches (Lowe's ratio test, mutual
   best), fitted by RANSAC to a similarity transform (rotation, uniform scale,
   translation: what crops, borders, rescaling and screenshots do). The inliers are
   the evidence; the transform maps the query's frame into the stored image, which
   gives the **region** of the stored image that the query shows.

Data shapes: a :class:`Features` holds ``points`` float32 ``(n, 2)`` (x, y in the
*original* image's pixels), ``descriptors`` uint8 ``(n, 32)``, and the original
``width`` and ``height``; ``n`` may be 0 (a flat colour, a line, an 8x8 icon): such an
image is searched by its signature alone. :func:`encode`/:func:`decode` turn one into
the compact bytes a store keeps (about 3.6 kB per image: 12 + 36 bytes a keypoint).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "Features",
    "Verification",
    "DETECT_SIDE",
    "STORED_KEYPOINTS",
    "QUERY_KEYPOINTS",
    "MIN_INLIERS",
    "extract",
    "extract_query",
    "verify",
    "verify_many",
    "encode",
    "decode",
]

#: Long side, in pixels, of the grey copy the detector sees (larger images are shrunk
#: first: the cost of detection is bounded whatever the upload's size).
DETECT_SIDE = 640

#: Keypoints a stored image keeps (32 + 4 bytes each on disk).
STORED_KEYPOINTS = 100

#: Keypoints a query keeps at each of its detection sides (never stored, so it can
#: afford more).
QUERY_KEYPOINTS = 1000

#: A query larger than DETECT_SIDE is also detected at this long side: when the picture
#: is a part of the query (pasted into a screenshot, framed by a wide border), its
#: keypoints are then found at about the scale the stored image was.
QUERY_DETAIL_SIDE = 1280

#: Fewest RANSAC inliers that count as the same picture (measured in BENCHMARKS.md).
MIN_INLIERS = 10

#: Lowe's ratio: the best match must be this much closer than the second best.
RATIO = 0.8

#: Hamming distance (of 256 bits) above which two descriptors never match.
MAX_HAMMING = 80

#: RANSAC reprojection threshold, as a fraction of the stored image's long side.
REPROJECTION = 0.012

#: A runner-up in the ratio test must lie this far (fraction of the query's long side)
#: from the nearest match.
SEPARATION = 0.02

#: Least share of each image's area that the inliers' bounding box must span: matches
#: clustered on a small shared detail (a logo, a watermark, a line of text) are not the
#: same picture.
MIN_COVERAGE = 0.01

_NEIGHBOURS = 4

_ORB_CANDIDATES = 3  # ORB detects this many times the keypoints kept, then we pick
_GRID = 8  # cells per side of the spreading grid

_HEADER = struct.Struct("<IIfH")  # width, height, scale (original px per stored unit), n
_POINT_UNITS = 8.0  # stored points are in 1/8 pixel of the detection image


@dataclass(frozen=True)
class Features:
    """Keypoints of one image: positions in original pixels, ORB descriptors, its size."""

    points: npt.NDArray[np.float32]
    descriptors: npt.NDArray[np.uint8]
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @classmethod
    def empty(cls, width: int, height: int) -> Features:
        """No keypoints (a flat or tiny image)."""
        return cls(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), width, height)


@dataclass(frozen=True)
class Verification:
    """A candidate confirmed by RANSAC.

    ``inliers`` is the number of descriptor matches consistent with one similarity
    transform; ``region`` is ``(x0, y0, x1, y1)``, the box of the stored image (in
    its original pixels) that the query's frame covers, clipped to the image;
    ``scale`` and ``rotation`` (degrees) describe the transform from the query to the
    stored image.
    """

    inliers: int
    matches: int
    region: tuple[int, int, int, int]
    scale: float
    rotation: float


def _detection_grey(pixels: npt.NDArray[np.uint8], side: int) -> tuple[npt.NDArray[np.uint8], float]:
    """A grey copy with long side <= ``side`` and the factor back to original pixels."""
    if pixels.ndim == 3:
        height, width = pixels.shape[:2]
    else:
        height, width = pixels.shape
    long_side = max(height, width)
    factor = 1.0
    if long_side > side:
        factor = long_side / side
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        # INTER_AREA averages the pixels each output pixel covers: no aliasing.
        pixels = np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    if pixels.ndim == 3:
        grey = np.asarray(cv2.cvtColor(np.ascontiguousarray(pixels[:, :, :3]), cv2.COLOR_RGB2GRAY),
                          dtype=np.uint8)
    else:
        grey = np.ascontiguousarray(pixels, dtype=np.uint8)
    return grey, factor


def _spread(points: npt.NDArray[np.float32], responses: npt.NDArray[np.float32], keep: int,
            width: int, height: int) -> npt.NDArray[np.intp]:
    """Indices of ``keep`` keypoints spread over a grid: each cell's strongest in turn."""
    if len(points) <= keep:
        return np.arange(len(points))
    cells_x = np.minimum((points[:, 0] * _GRID / max(width, 1)).astype(np.intp), _GRID - 1)
    cells_y = np.minimum((points[:, 1] * _GRID / max(height, 1)).astype(np.intp), _GRID - 1)
    cell = cells_y * _GRID + cells_x
    # Rank of each keypoint inside its cell, strongest first; then take by rank, then strength.
    order = np.lexsort((-responses, cell))
    sorted_cells = cell[order]
    starts = np.searchsorted(sorted_cells, sorted_cells, side="left")
    rank = np.empty(len(points), np.intp)
    rank[order] = np.arange(len(points)) - starts
    chosen = np.lexsort((-responses, rank))[:keep]
    return np.sort(chosen)


def extract(pixels: npt.NDArray[np.uint8], *, keypoints: int = STORED_KEYPOINTS,
            side: int = DETECT_SIDE) -> Features:
    """ORB keypoints of an RGB ``(h, w, 3)`` or grey ``(h, w)`` uint8 image.

    At most ``keypoints`` are kept, spread over the picture. An image too small or
    too flat for the detector gives :meth:`Features.empty`, never an error.
    """
    height, width = pixels.shape[:2]
    grey, factor = _detection_grey(pixels, side)
    # ORB needs room for its 31-pixel patch at the coarsest level it uses.
    if min(grey.shape) < 48:
        return Features.empty(width, height)
    # ORB_create is missing from OpenCV's type stubs.
    orb = cv2.ORB_create(nfeatures=keypoints * _ORB_CANDIDATES,  # type: ignore[attr-defined]
                         scaleFactor=1.2, nlevels=8, edgeThreshold=15, patchSize=31, fastThreshold=10)
    found, descriptors = orb.detectAndCompute(grey, None)
    if descriptors is None or not found:
        return Features.empty(width, height)
    points = np.array([k.pt for k in found], dtype=np.float32)
    responses = np.array([k.response for k in found], dtype=np.float32)
    chosen = _spread(points, responses, keypoints, grey.shape[1], grey.shape[0])
    return Features((points[chosen] * np.float32(factor)).astype(np.float32),
                    np.ascontiguousarray(descriptors[chosen], dtype=np.uint8), width, height)


def extract_query(pixels: npt.NDArray[np.uint8]) -> Features:
    """The keypoints of a query: at DETECT_SIDE, and at QUERY_DETAIL_SIDE when it is larger.

    Two scales, measured on crops and screenshots: a crop matches best at the stored
    images' detection side, a picture pasted at 60% into a larger canvas at the finer
    one. Their union costs one more detection and the verification does the rest.
    """
    coarse = extract(pixels, keypoints=QUERY_KEYPOINTS, side=DETECT_SIDE)
    if max(pixels.shape[:2]) <= DETECT_SIDE * 1.25:
        return coarse
    fine = extract(pixels, keypoints=QUERY_KEYPOINTS, side=QUERY_DETAIL_SIDE)
    return Features(np.concatenate([coarse.points, fine.points]),
                    np.concatenate([coarse.descriptors, fine.descriptors]), coarse.width, coarse.height)


def encode(features: Features) -> bytes:
    """The compact bytes a store keeps: 12-byte header, then 4 + 32 bytes a keypoint.

    Points are kept in 1/8 pixel of a frame whose long side is DETECT_SIDE (uint16).
    """
    long_side = max(features.width, features.height, 1)
    scale = max(long_side / DETECT_SIDE, 1.0) / _POINT_UNITS
    units = np.clip(np.rint(features.points / scale), 0, 65535).astype("<u2")
    n = len(features)
    data: bytes = (_HEADER.pack(features.width, features.height, scale, n) + units.tobytes()
                   + features.descriptors.tobytes())
    return data


def decode(data: bytes) -> Features:
    """Inverse of :func:`encode`; ValueError for bytes it did not write."""
    if len(data) < _HEADER.size:
        raise ValueError("feature bytes are shorter than their header")
    width, height, scale, n = _HEADER.unpack_from(data)
    expected = _HEADER.size + n * (4 + 32)
    if len(data) != expected:
        raise ValueError(f"feature bytes are {len(data)} long, expected {expected}")
    offset = _HEADER.size
    units = np.frombuffer(data, "<u2", 2 * n, offset).reshape(n, 2)
    descriptors = np.frombuffer(data, np.uint8, 32 * n, offset + 4 * n).reshape(n, 32)
    return Features((units.astype(np.float32) * np.float32(scale)), descriptors.copy(), width, height)


def verify(query: Features, stored: Features, *, min_inliers: int = MIN_INLIERS) -> Verification | None:
    """RANSAC-fit the query's keypoints to the stored image's; None unless confirmed.

    A match is a descriptor pair that passes Lowe's ratio test (ratio :data:`RATIO`,
    against the nearest query keypoint :data:`SEPARATION` away) within
    :data:`MAX_HAMMING` bits, one per query keypoint. A similarity transform (OpenCV's
    ``estimateAffinePartial2D``) is fitted by RANSAC; the candidate is confirmed when
    at least ``min_inliers`` matches agree, they span at least :data:`MIN_COVERAGE`
    of both images, the scale is plausible (1/16 to 16) and the query's frame maps
    onto a region of the stored image at least 2% of its side.
    """
    return verify_many(query, [stored], min_inliers=min_inliers)[0]


def verify_many(query: Features, stored: list[Features], *,
                min_inliers: int = MIN_INLIERS) -> list[Verification | None]:
    """:func:`verify` of one query against several stored images, in one matching pass.

    The stored descriptors of every candidate are matched against the query's in one
    brute-force Hamming pass (one call into OpenCV instead of one per candidate).
    """
    results: list[Verification | None] = [None] * len(stored)
    usable = [i for i, features in enumerate(stored) if len(features) >= 2]
    if len(query) < 2 or not usable:
        return results
    descriptors = np.concatenate([stored[i].descriptors for i in usable])
    owners = np.concatenate([np.full(len(stored[i]), i, dtype=np.intp) for i in usable])
    local = np.concatenate([np.arange(len(stored[i]), dtype=np.intp) for i in usable])
    # For each stored keypoint, its nearest query keypoints. The ratio test compares
    # the nearest with the nearest *elsewhere*: a query point detected at two scales
    # (or two pyramid levels) is its own runner-up, which would fail a plain test.
    found = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(descriptors, query.descriptors, k=_NEIGHBOURS)
    index = np.full((len(found), _NEIGHBOURS), -1, dtype=np.int64)
    distance = np.full((len(found), _NEIGHBOURS), np.inf)
    for row, neighbours in enumerate(found):
        for column, neighbour in enumerate(neighbours):
            index[row, column] = neighbour.trainIdx
            distance[row, column] = neighbour.distance
    where = query.points[np.maximum(index, 0)]
    apart = np.hypot(*(where - where[:, :1]).transpose(2, 0, 1)) > SEPARATION * max(query.width, query.height)
    runner_up = np.where(apart & (index >= 0), distance, np.inf)[:, 1:].min(axis=1)
    rows = np.stack([index[:, 0], distance[:, 0]], axis=1)
    good = (index[:, 0] >= 0) & (distance[:, 0] <= MAX_HAMMING) & (distance[:, 0] <= RATIO * runner_up)
    for i in usable:
        mine = np.flatnonzero(good & (owners == i))
        if len(mine) < min_inliers:
            continue
        # One stored keypoint per query keypoint: the closest claim wins.
        order = mine[np.lexsort((rows[mine, 1], rows[mine, 0]))]
        first = np.ones(len(order), dtype=bool)
        first[1:] = rows[order[1:], 0] != rows[order[:-1], 0]
        kept = order[first]
        if len(kept) < min_inliers:
            continue
        pairs = np.stack([rows[kept, 0].astype(np.int64), local[kept]], axis=1)
        results[i] = _fit(query, stored[i], pairs, min_inliers)
    return results


def _coverage(points: npt.NDArray[np.float32], features: Features) -> float:
    """Share of the image's area covered by the bounding box of ``points``."""
    spans = points.max(axis=0) - points.min(axis=0)
    return float(spans[0] * spans[1]) / max(features.width * features.height, 1)


def _fit(query: Features, stored: Features, pairs: npt.NDArray[np.int64],
         min_inliers: int) -> Verification | None:
    """RANSAC similarity from query to stored points of ``pairs``; None unless confirmed."""
    source = query.points[pairs[:, 0]]
    target = stored.points[pairs[:, 1]]
    threshold = REPROJECTION * max(stored.width, stored.height)
    matrix, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                               ransacReprojThreshold=threshold, maxIters=2000,
                                               confidence=0.995, refineIters=10)
    if matrix is None or mask is None:
        return None
    inliers = int(mask.sum())
    if inliers < min_inliers:
        return None
    chosen = mask.ravel().astype(bool)
    if (_coverage(source[chosen], query) < MIN_COVERAGE
            or _coverage(target[chosen], stored) < MIN_COVERAGE):
        return None
    a, b = float(matrix[0, 0]), float(matrix[1, 0])
    scale = float(np.hypot(a, b))
    if not 1 / 16 <= scale <= 16:
        return None
    corners = np.array([[0, 0], [query.width, 0], [query.width, query.height], [0, query.height]],
                       dtype=np.float64)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    x0, y0 = np.clip(mapped.min(axis=0), 0, [stored.width, stored.height])
    x1, y1 = np.clip(mapped.max(axis=0), 0, [stored.width, stored.height])
    if min(x1 - x0, y1 - y0) < 0.02 * max(stored.width, stored.height):
        return None
    return Verification(inliers, len(pairs), (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))),
                        scale, float(np.degrees(np.arctan2(b, a))))
