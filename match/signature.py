"""Goldberg image signatures, compatible with ascribe's image-match 1.1.2.

The method is H. Chi Wong, Marshall Bern and David Goldberg, "An image signature for any
kind of image", Proc. ICIP 2002, pp. I-409-412 (image-match calls it "Goldberg et al.").
This module is pure numpy: it does no I/O and does not import Pillow (decoding lives in
:mod:`match.image`).

Signature (:func:`generate`)
    ``int8`` array of :data:`SIGNATURE_LENGTH` = 648 values in ``-2..2``, computed with
    image-match's defaults: a 9x9 grid inside the image cropped to the 5th-95th
    percentiles of cumulative grey-level variation, a P x P mean around each grid point
    (``P = max(2, int(0.5 + min(h, w) / 20))``), the differences with the 8 neighbours
    (diagonals included), values closer than 2/255 set to 0, and the others binned into
    2 levels on each side by their median. The output is bit-for-bit the one of
    ``ImageSignature().generate_signature`` (tests/test_signature.py checks it on real
    photographs against image-match itself).

Words (:func:`words`)
    ``int64`` array of :data:`N_WORDS` = 63 integers: 63 words of
    :data:`WORD_LENGTH` = 16 consecutive signature values (starting at
    ``linspace(0, 648, 63, endpoint=False)``, the last ones zero-padded), each value
    squeezed to its sign and read as a base-3 number. They equal image-match's
    ``make_record`` fields ``simple_word_0 .. simple_word_62``: two signatures of the same
    image share most words, which is what a term index looks up.

Distance (:func:`distance`, :func:`distances`)
    ``|a - b| / (|a| + |b|)`` with L2 norms, a float in ``[0, 1]``: 0 for equal
    signatures, 1 when one of them is all zeros. Two all-zero signatures (featureless
    images: a flat colour) are at distance 1.0, not 0/0: image-match's search does the
    same (its ``nan_value``), so that blank images never match each other or anything.
    :data:`DEFAULT_CUTOFF` = 0.45 is image-match's ``distance_cutoff``: a pair closer
    than that is reported as a match.

Input (:func:`generate`, :func:`generate_all`)
    Either the grey-level image image-match works on (a 2-D float array in ``[0, 1]``,
    as skimage's ``rgb2gray`` gives; see :func:`match.image.load_grey`), or -- the fast
    path -- the 8-bit RGB pixels it comes from (``uint8``, shape ``(h, w, 3)``; see
    :func:`match.image.load_rgb`). With RGB pixels the grey levels are computed only
    where the algorithm reads them (a few lines for the crop, the 81 P x P squares),
    with the very floating-point operations ``rgb2gray`` uses, so the result is the same
    as with the whole grey image while skipping most of the per-pixel work.

Why the crop can be computed from a few lines: image-match cuts the image where the
cumulative sums of the absolute grey differences along each row (column) reach the
5th and 95th percentiles. Those percentiles interpolate between two consecutive
cumulative sums with a weight that is either exactly 0 or at least 0.05 away from 0
and 1 (it depends only on the number of lines), and the lines' sums are either exactly
0 (a line of one grey level) or at least 1 / 2550000 (grey levels are multiples of that
in exact arithmetic), far above rounding. So whether the limit falls on a line, or on
the first (last) of a run of equal cumulative sums, depends only on which lines are
flat near the percentile position; :func:`_crop_limit` checks just those. (The one
theoretical exception: a line whose only differences are between distinct colours of
the same exact grey level, which rounding may tell apart by 1e-17.)
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CUTOFF",
    "N_WORDS",
    "SIGNATURE_LENGTH",
    "WORD_LENGTH",
    "distance",
    "distances",
    "generate",
    "generate_all",
    "norms",
    "symmetries",
    "words",
]

#: Number of values in a signature (9 x 9 grid points x 8 neighbours).
SIGNATURE_LENGTH = 648
#: Number of words per signature (image-match's ``N``).
N_WORDS = 63
#: Signature values per word (image-match's ``k``).
WORD_LENGTH = 16
#: image-match's ``distance_cutoff``: pairs closer than this are matches.
DEFAULT_CUTOFF = 0.45

GRID_SIZE = 9
CROP_PERCENTILES = (5, 95)
IDENTICAL_TOLERANCE = 2 / 255.0
N_LEVELS = 2

#: skimage's rgb2gray weights (ITU-R BT.709 luma), applied to ``uint8 / 255``.
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)
#: Below this many pixels on a side, the grey image is computed whole (see _Source).
_SMALL_SIDE = 16
#: numpy's reduction buffer (elements): see _mean_levels.
_REDUCE_BUFFER = 8192

Signature = npt.NDArray[np.int8]
FloatArray = npt.NDArray[np.float64]
ImageArray = npt.NDArray[np.generic]


def generate(image: ImageArray) -> Signature:
    """The signature of one image: ``int8`` array of shape ``(648,)``, values in -2..2.

    ``image`` is a 2-D grey-level array (float, in ``[0, 1]``) or ``uint8`` RGB pixels of
    shape ``(h, w, 3)`` (faster, same result). Raises ``ValueError`` for anything else.
    """
    return _signatures(image, [_identity])[0]


def generate_all(image: ImageArray) -> npt.NDArray[np.int8]:
    """Signatures of the 8 symmetries of the square of ``image``: ``int8``, ``(8, 648)``.

    Row ``r`` is the signature of ``np.rot90(image, r % 4)``, mirrored left-right
    (``np.fliplr``) after the rotation when ``r >= 4``::

        row  transform                   Pillow's Image.Transpose giving the same pixels
        0    identity                    (none)
        1    rot90, 90 degrees ccw       ROTATE_90
        2    rot180                      ROTATE_180
        3    rot270, 90 degrees cw       ROTATE_270
        4    mirror                      FLIP_LEFT_RIGHT
        5    mirror of rot90             TRANSVERSE (flip over the anti-diagonal)
        6    mirror of rot180            FLIP_TOP_BOTTOM
        7    mirror of rot270            TRANSPOSE (flip over the main diagonal)

    Each row equals :func:`generate` of a physically transformed copy of the image (the
    same pixels, moved): the transforms are numpy views of ``image``, never re-decoded,
    and the grey levels of the squares they read are computed once for all 8.
    Searching with all 8 finds a stored image that was rotated or mirrored (an
    un-rotated phone photo, a flipped meme) -- and conversely.
    """
    return np.stack(_signatures(image, _SYMMETRIES))


def symmetries(image: ImageArray) -> list[ImageArray]:
    """The 8 views of :func:`generate_all`, in its order (rotations act on axes 0, 1)."""
    return [symmetry(image) for symmetry in _SYMMETRIES]


def _identity(image: ImageArray) -> ImageArray:
    return image


def _symmetry(turns: int, mirror: bool) -> Callable[[ImageArray], ImageArray]:
    def transform(image: ImageArray) -> ImageArray:
        rotated = np.rot90(image, turns, axes=(0, 1))
        return np.flip(rotated, axis=1) if mirror else rotated
    return transform


_SYMMETRIES = [_symmetry(turns, mirror) for mirror in (False, True) for turns in range(4)]


def words(signature: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """The 63 integer words of a signature (``(63,)`` ``int64``), or of each row of a
    ``(n, 648)`` array (``(n, 63)``): image-match's ``simple_word_0`` .. ``simple_word_62``.
    """
    sig = np.asarray(signature)
    if sig.shape[-1:] != (SIGNATURE_LENGTH,) or sig.ndim not in (1, 2):
        raise ValueError(f"expected shape (648,) or (n, 648), got {sig.shape}")
    # Sign of each value + 1 (0, 1, 2), with one extra 1 (a zero) that padding points to.
    digits = np.concatenate([np.sign(sig).astype(np.int64) + 1,
                             np.ones(sig.shape[:-1] + (1,), dtype=np.int64)], axis=-1)
    return digits[..., _WORD_INDEX] @ _WORD_WEIGHTS


def distance(a: npt.NDArray[np.integer], b: npt.NDArray[np.integer]) -> float:
    """Normalized distance ``|a - b| / (|a| + |b|)`` between two signatures, in [0, 1].

    Identical to image-match's ``normalized_distance``, except that two all-zero
    signatures are 1.0 apart (see the module docstring) instead of NaN.
    """
    return float(distances(np.asarray(a), np.asarray(b)[np.newaxis, :])[0])


def norms(matrix: npt.NDArray[np.generic]) -> FloatArray:
    """L2 norm of each row of a ``(n, 648)`` signature matrix (``float64``, exact).

    Pass the result to :func:`distances` to skip recomputing it at each query.
    """
    rows = np.asarray(matrix)
    if rows.dtype != np.float32:
        rows = rows.astype(np.float32)
    squares = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
    result: FloatArray = np.sqrt(squares)
    return result


def distances(query: npt.NDArray[np.integer], matrix: npt.NDArray[np.generic],
              matrix_norms: FloatArray | None = None) -> FloatArray:
    """Distances from ``query`` to each row of ``matrix``: ``float64`` of shape ``(n,)``.

    ``query`` may also be a ``(k, 648)`` stack (e.g. :func:`generate_all`'s 8 rows): the
    result is then ``(k, n)``. ``matrix`` is ``(n, 648)``, ``int8`` signatures or -- the
    fast path for a store that keeps it in memory -- the same values as a C-contiguous
    ``float32`` array (one BLAS matrix-vector product, no conversion). ``matrix_norms``
    is :func:`norms` of it, precomputed. The results equal :func:`distance`'s exactly:
    every dot product of signatures is a small integer, exact in float32.
    """
    rows = np.asarray(matrix)
    if rows.ndim != 2 or rows.shape[1] != SIGNATURE_LENGTH:
        raise ValueError(f"expected a (n, 648) matrix, got {rows.shape}")
    queries = np.asarray(query, dtype=np.float32)
    if queries.shape[-1:] != (SIGNATURE_LENGTH,) or queries.ndim not in (1, 2):
        raise ValueError(f"expected a (648,) or (k, 648) query, got {queries.shape}")
    if rows.dtype != np.float32:
        rows = rows.astype(np.float32)
    if matrix_norms is None:
        matrix_norms = norms(rows)
    stacked = np.atleast_2d(queries)
    # Squares of the norms are integers: rint undoes sqrt's rounding exactly.
    row_squares = np.rint(np.square(matrix_norms))
    query_squares = np.einsum("ij,ij->i", stacked, stacked).astype(np.float64)[:, np.newaxis]
    dots = (rows @ stacked.T).T.astype(np.float64)
    differences = np.sqrt(np.maximum(query_squares + row_squares - 2.0 * dots, 0.0))
    denominators = np.sqrt(query_squares) + matrix_norms
    result: FloatArray = np.divide(differences, denominators, out=np.ones_like(differences),
                                   where=denominators > 0)
    return result[0] if queries.ndim == 1 else result


# --- the signature -------------------------------------------------------------------


class _Source:
    """The pixels a call reads, as they lie in memory, and what its views share.

    Holds the grey image (2-D float) or uint8 RGB pixels as ``base``: positive strides,
    rows outermost (the memory order of an un-rotated image; the input is
    ``flips(swap(base))``, see :func:`_unturn`). Views (:meth:`view`) are the input
    rotated or mirrored; they read lines and squares of the base and turn them.

    Grey levels computed from RGB are bit-identical to skimage's ``rgb2gray`` of the
    whole image at the same places: :func:`_rgb_to_grey` uses the same expression, a
    BLAS matrix-vector product per row of at least two pixels, whose result per pixel
    does not depend on the row's length or position. Images smaller than
    ``_SMALL_SIDE`` are converted whole, as ``rgb2gray`` would (a one-pixel-wide image
    takes another BLAS path there).
    """

    def __init__(self, image: ImageArray) -> None:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
            self.is_rgb = True
        elif array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64, copy=False)
            self.is_rgb = False
        else:
            raise ValueError("expected a 2-D float grey image or uint8 RGB pixels of shape "
                             f"(h, w, 3); got {array.dtype} {array.shape}")
        if min(array.shape[:2]) == 0:
            raise ValueError(f"empty image {array.shape}")
        if self.is_rgb and min(array.shape[:2]) < _SMALL_SIDE:
            array = _rgb_to_grey(np.ascontiguousarray(array))
            self.is_rgb = False
        self.base, swap, flip_rows, flip_cols = _unturn(array)
        # The input's turn applied to a 2 x 2 probe of distinct values: views are matched
        # against it (see view()).
        self.probe = _apply_turn(_PROBE, swap, flip_rows, flip_cols)
        self._flat: dict[tuple[int, int], bool] = {}
        #: Grey levels of the prepared rectangles, packed (see prepare()), and where the
        #: base's rows (intervals[0]) and columns (intervals[1]) lie in it.
        self.grey = np.empty((0, 0))
        self.intervals = (_Intervals([]), _Intervals([]))

    def view(self, transform: Callable[[ImageArray], ImageArray]) -> _View:
        """``transform`` (a symmetry of the square, as numpy views) of the input."""
        target = transform(self.probe)
        for swap in (False, True):
            for flip_rows in (False, True):
                for flip_cols in (False, True):
                    if np.array_equal(_apply_turn(_PROBE, swap, flip_rows, flip_cols), target):
                        return _View(self, swap, flip_rows, flip_cols)
        raise ValueError("not a symmetry of the square")

    def to_grey(self, values: npt.NDArray[np.generic]) -> FloatArray:
        """Grey levels of base pixels (any shape with at least two per row)."""
        if self.is_rgb:
            return _rgb_to_grey(values.astype(np.uint8, copy=False))
        return values.astype(np.float64, copy=False)

    def line_is_flat(self, axis: int, index: int) -> bool:
        """Whether base row (``axis=0``) or column (``axis=1``) ``index`` has one grey level."""
        key = (axis, index)
        if key not in self._flat:
            line = self.base[index] if axis == 0 else self.base[:, index]
            # As one row of pixels (order does not matter here): a column of width 1
            # would take another BLAS path.
            grey = self.to_grey(np.ascontiguousarray(line)[np.newaxis])
            self._flat[key] = bool(np.all(grey == grey.flat[0]))
        return self._flat[key]

    def prepare(self, rects: list[tuple[tuple[int, int], tuple[int, int]]]) -> None:
        """Compute, once, the grey levels of every base rectangle ``(rows, cols)`` the views
        will read: those of the rows in any of them times the columns in any of them,
        packed into :attr:`grey`."""
        rows = _Intervals([rows for rows, _ in rects])
        cols = _Intervals([cols for _, cols in rects])
        gathered = np.empty((rows.total, cols.total) + self.base.shape[2:], self.base.dtype)
        for (row_lo, row_hi), row_at in zip(rows.spans, rows.offsets, strict=True):
            band = self.base[row_lo:row_hi]
            target = gathered[row_at:row_at + row_hi - row_lo]
            for (col_lo, col_hi), col_at in zip(cols.spans, cols.offsets, strict=True):
                target[:, col_at:col_at + col_hi - col_lo] = band[:, col_lo:col_hi]
        self.grey = self.to_grey(gathered)
        self.intervals = (rows, cols)


class _Intervals:
    """Merged integer intervals [lo, hi) and where each lies once packed end to end."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        self.spans: list[tuple[int, int]] = []
        for lo, hi in sorted(intervals):
            if self.spans and lo <= self.spans[-1][1]:
                self.spans[-1] = (self.spans[-1][0], max(self.spans[-1][1], hi))
            else:
                self.spans.append((lo, hi))
        lengths = [hi - lo for lo, hi in self.spans]
        self.offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        self.total = sum(lengths)
        self._starts = [lo for lo, _ in self.spans]

    def locate(self, interval: tuple[int, int]) -> int:
        """Packed position of ``interval`` (which lies inside one of the spans)."""
        k = bisect.bisect_right(self._starts, interval[0]) - 1
        return self.offsets[k] + interval[0] - self.spans[k][0]


class _View:
    """The input turned by one symmetry: ``flips(swap(base))`` of its source's base.

    Takes and returns the view's coordinates; reads through the source."""

    def __init__(self, source: _Source, swap: bool, flip_rows: bool, flip_cols: bool) -> None:
        self.source = source
        self.swap, self.flip_rows, self.flip_cols = swap, flip_rows, flip_cols
        height, width = source.base.shape[:2]
        self.shape = (width, height) if swap else (height, width)

    def base_rect(self, rows: tuple[int, int],
                  cols: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The base rectangle that the view's ``[rows, cols]`` shows (turned)."""
        height, width = self.shape
        if self.flip_rows:
            rows = (height - rows[1], height - rows[0])
        if self.flip_cols:
            cols = (width - cols[1], width - cols[0])
        return (cols, rows) if self.swap else (rows, cols)

    def slices(self, windows: list[tuple[int, int]], axis: int) -> list[slice]:
        """Slices of the source's prepared grey levels showing the view's ``windows``
        along ``axis`` (0: rows, 1: columns), in the view's order (reversed if flipped)."""
        size = self.shape[axis]
        flip = (self.flip_rows, self.flip_cols)[axis]
        intervals = self.source.intervals[1 - axis if self.swap else axis]
        result = []
        for lo, hi in windows:
            if flip:
                lo, hi = size - hi, size - lo
            start = intervals.locate((lo, hi))
            stop = start + hi - lo
            result.append(slice(stop - 1, start - 1 if start else None, -1) if flip
                          else slice(start, stop))
        return result

    def square(self, rows: slice, cols: slice) -> FloatArray:
        """Grey levels of the view's window ``rows`` x ``cols`` (slices from :meth:`slices`),
        as a view of the source's prepared grey levels."""
        grey = self.source.grey
        return grey[cols, rows].T if self.swap else grey[rows, cols]

    def line_is_flat(self, axis: int, index: int) -> bool:
        """Whether view row (``axis=0``) or column (``axis=1``) ``index`` is one grey level."""
        size = self.shape[axis]
        if (self.flip_rows, self.flip_cols)[axis]:
            index = size - 1 - index
        return self.source.line_is_flat(1 - axis if self.swap else axis, index)


def _apply_turn(values: npt.NDArray[np.generic], swap: bool, flip_rows: bool,
                flip_cols: bool) -> npt.NDArray[np.generic]:
    """``values`` with axes 0 and 1 swapped (if ``swap``), then reversed along them."""
    turned = values.swapaxes(0, 1) if swap else values
    return turned[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _unturn(array: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.generic], bool, bool, bool]:
    """``(base, swap, flip_rows, flip_cols)`` with ``array`` equal to ``base`` with axes 0
    and 1 swapped (if ``swap``) then reversed along them (if ``flip_*``), where ``base``
    has positive strides, rows outermost: the memory order of an un-rotated image."""
    flip_rows, flip_cols = array.strides[0] < 0, array.strides[1] < 0
    base = array[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
    swap = base.strides[0] < base.strides[1]
    return (base.swapaxes(0, 1) if swap else base), swap, flip_rows, flip_cols


_PROBE = np.arange(4).reshape(2, 2)


def _rgb_to_grey(rgb: npt.NDArray[np.uint8]) -> FloatArray:
    """skimage ``rgb2gray`` of uint8 RGB, operation for operation (``img_as_float``
    multiplies by ``1 / 255``; the weights are applied with ``@``)."""
    result: FloatArray = np.multiply(rgb, 1.0 / 255, dtype=np.float64) @ _GREY_WEIGHTS
    return result


class _Plan(NamedTuple):
    """Where one view's signature reads: its P x P squares (image-match's windows)."""

    row_windows: list[tuple[int, int]]
    col_windows: list[tuple[int, int]]
    size: int


def _signatures(image: ImageArray,
                transforms: list[Callable[[ImageArray], ImageArray]]) -> list[Signature]:
    """image-match's ``generate_signature`` steps 2-5 for each transform of ``image``.

    Every view is planned first (crop, grid, squares); the grey levels of all the
    squares are then computed once (the views' squares overlap in memory), and each
    view's means read them.
    """
    source = _Source(image)
    views = [source.view(transform) for transform in transforms]
    plans = [_plan(view) for view in views]
    source.prepare([view.base_rect(rows, cols) for view, plan in zip(views, plans, strict=True)
                    for rows in plan.row_windows for cols in plan.col_windows])
    return [_normalize_and_threshold(_differentials(_mean_levels(view, plan)))
            for view, plan in zip(views, plans, strict=True)]


def _plan(view: _View) -> _Plan:
    """image-match's crop, grid and window arithmetic for one view."""
    height, width = view.shape
    top, bottom = _crop(height, functools.partial(view.line_is_flat, 0))
    left, right = _crop(width, functools.partial(view.line_is_flat, 1))
    x_coords = np.linspace(top, bottom, GRID_SIZE + 2, dtype=int)[1:-1]
    y_coords = np.linspace(left, right, GRID_SIZE + 2, dtype=int)[1:-1]
    p = max(2.0, int(0.5 + min(height, width) / 20.0))
    return _Plan([_window(int(x), p, height) for x in x_coords],
                 [_window(int(y), p, width) for y in y_coords], int(p))


def _crop(n: int, is_flat: Callable[[int], bool]) -> tuple[int, int]:
    """image-match's ``crop_image`` limits along one axis of ``n`` lines.

    ``is_flat(i)`` tells whether line ``i`` has a single grey level (its sum of absolute
    differences, image-match's per-line increment of the cumulative sum, is 0).
    """
    lower_pct, upper_pct = CROP_PERCENTILES
    flat = functools.lru_cache(maxsize=None)(is_flat)
    lower = _crop_limit(n, lower_pct, "right", flat)
    upper = _crop_limit(n, upper_pct, "left", flat)
    if lower > upper:  # nearly featureless: image-match falls back to fixed margins
        lower = int(lower_pct / 100.0 * n)
        upper = int(upper_pct / 100.0 * n)
    return lower, upper


def _crop_limit(n: int, percentile: int, side: str, flat: Callable[[int], bool]) -> int:
    """``searchsorted(c, percentile(c, q), side)`` for the cumulative sums ``c`` of ``n``
    line increments, knowing only which increments are 0 (see the module docstring)."""
    k, interpolated = _percentile_position(n, percentile)
    if interpolated and not flat(k + 1):
        return k + 1  # strictly between c[k] and c[k + 1]
    # The percentile is c[k]: the first (left) or one past the last (right) of its run.
    if side == "left":
        while k > 0 and flat(k):
            k -= 1
        return k
    k += 1
    while k < n and flat(k):
        k += 1
    return k


@functools.lru_cache(maxsize=1024)
def _percentile_position(n: int, percentile: int) -> tuple[int, bool]:
    """Where numpy's percentile of ``n`` sorted values falls: the index ``k`` of the value
    below, and whether it interpolates towards ``k + 1`` (weight > 0) or is exactly ``k``."""
    position = float(np.percentile(np.arange(n, dtype=np.float64), percentile))
    k = int(np.floor(position))
    return k, position != k


def _mean_levels(view: _View, plan: _Plan) -> FloatArray:
    """image-match's ``compute_mean_level``: the mean grey of each P x P square of the
    plan, the very sum ``np.mean`` makes there.

    image-match takes ``np.mean`` of a strided slice of its grey image. numpy sums such a
    slice through a buffer of ``_REDUCE_BUFFER`` elements: a slice that fits is summed
    like its contiguous copy (pairwise summation). So when every square is whole (none
    clipped by the image border) and fits, the squares are copied into one contiguous
    ``(81, P * P)`` array and summed in one vectorized reduction; otherwise each mean is
    ``np.mean`` of a slice laid out like image-match's (a strided view).
    """
    rows_count, cols_count, size = len(plan.row_windows), len(plan.col_windows), plan.size
    row_slices, col_slices = view.slices(plan.row_windows, 0), view.slices(plan.col_windows, 1)
    whole = all(hi - lo == size for lo, hi in plan.row_windows + plan.col_windows)
    if whole and size * size <= _REDUCE_BUFFER:
        blocks = np.empty((rows_count, cols_count, size, size))
        for i, rows in enumerate(row_slices):
            for j, cols in enumerate(col_slices):
                blocks[i, j] = view.square(rows, cols)
        sums = np.add.reduce(blocks.reshape(rows_count, cols_count, size * size), axis=2)
        means: FloatArray = sums / float(size * size)
        return means
    means = np.empty((rows_count, cols_count))
    for i, rows in enumerate(row_slices):
        for j, cols in enumerate(col_slices):
            square = view.square(rows, cols)
            strided = np.empty((square.shape[0], square.shape[1] + 1))
            strided[:, :-1] = square
            means[i, j] = np.mean(strided[:, :-1])
    return means


def _window(center: int, p: float, size: int) -> tuple[int, int]:
    """[lower, upper) of the P-wide window at ``center`` (image-match's arithmetic)."""
    lower = int(max(center - p / 2, 0))
    upper = int(min(lower + p, size))
    return lower, upper


def _differentials(m: FloatArray) -> FloatArray:
    """image-match's ``compute_differentials`` (diagonals included), shape (n, n, 8).

    Each value is the same single float subtraction image-match makes, in its order:
    upper left, up, upper right, left, right, lower left, down, lower right (the
    neighbour minus the point for the first four, the point minus the neighbour after);
    0 where the neighbour is outside the grid.
    """
    n = m.shape[0]
    out = np.zeros((n, n, 8))
    out[1:, 1:, 0] = m[1:, 1:] - m[:-1, :-1]        # upper left
    out[1:, :, 1] = m[1:, :] - m[:-1, :]            # up
    out[1:, :-1, 2] = m[1:, :-1] - m[:-1, 1:]       # upper right
    out[:, 1:, 3] = m[:, 1:] - m[:, :-1]            # left
    out[:, :-1, 4] = -(m[:, 1:] - m[:, :-1])        # right
    out[:-1, 1:, 5] = -(m[1:, :-1] - m[:-1, 1:])    # lower left
    out[:-1, :, 6] = -(m[1:, :] - m[:-1, :])        # down
    out[:-1, :-1, 7] = -(m[1:, 1:] - m[:-1, :-1])   # lower right
    return out


def _normalize_and_threshold(differences: FloatArray) -> Signature:
    """image-match's ``normalize_and_threshold`` then ``ravel().astype(int8)``.

    Kept step for step, quirks included: a value set to level 1 is moved to level 2 by
    the second pass when it lies in the second interval (when the largest difference is
    exactly 1.0, black next to white).
    """
    values = differences.ravel().copy()
    mask = np.abs(values) < IDENTICAL_TOLERANCE
    values[mask] = 0.0
    if not mask.all():
        positive = np.percentile(values[values > 0.0], np.linspace(0, 100, N_LEVELS + 1))
        negative = np.percentile(values[values < 0.0], np.linspace(100, 0, N_LEVELS + 1))
        for level in range(N_LEVELS):
            low, high = positive[level], positive[level + 1]
            values[(values >= low) & (values <= high)] = level + 1
        for level in range(N_LEVELS):
            high, low = negative[level], negative[level + 1]
            values[(values <= high) & (values >= low)] = -(level + 1)
    return values.astype(np.int8)


# --- words ---------------------------------------------------------------------------


def _word_index() -> npt.NDArray[np.intp]:
    """(63, 16) indices into a signature for image-match's ``get_words``; positions past
    the end point at index 648 (the zero appended in :func:`words`)."""
    starts = np.linspace(0, SIGNATURE_LENGTH, N_WORDS, endpoint=False).astype(int)
    index = starts[:, np.newaxis] + np.arange(WORD_LENGTH)
    return np.minimum(index, SIGNATURE_LENGTH)


_WORD_INDEX = _word_index()
_WORD_WEIGHTS = 3 ** np.arange(WORD_LENGTH, dtype=np.int64)
