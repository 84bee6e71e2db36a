"""match.signature against the oracle, image-match 1.1.2 itself, on real photographs.

image-match is a required test dependency (``pip install --no-deps image-match==1.1.2``
plus scikit-image): these tests fail, never skip, without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from image_match.goldberg import ImageSignature
from image_match.signature_database_base import make_record
from image_match.signature_database_base import normalized_distance as oracle_distances
from PIL import Image

from match import image, signature

ORACLE = ImageSignature()

# Pillow transposes giving the pixels of generate_all's rows (see its docstring).
TRANSPOSES: dict[int, Image.Transpose | None] = {
    0: None,
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
    4: Image.Transpose.FLIP_LEFT_RIGHT,
    5: Image.Transpose.TRANSVERSE,
    6: Image.Transpose.FLIP_TOP_BOTTOM,
    7: Image.Transpose.TRANSPOSE,
}


def oracle_signature(data: bytes) -> npt.NDArray[np.int8]:
    """image-match's signature of image bytes, as its ``add_image(bytestream=True)``."""
    result: npt.NDArray[np.int8] = ORACLE.generate_signature(data, bytestream=True)
    return result


class _Signed:
    """Stands in for ImageSignature in ``make_record``: returns a known signature."""

    def __init__(self, known: npt.NDArray[np.int8]) -> None:
        self.known = known

    def generate_signature(self, *_args: object, **_kwargs: object) -> npt.NDArray[np.int8]:
        return self.known


def oracle_words(oracle_signature: npt.NDArray[np.int8]) -> npt.NDArray[np.int64]:
    """image-match's ``simple_word_0..62`` of a signature, from its own ``make_record``."""
    record = make_record("x", _Signed(oracle_signature), 16, 63, img=b"", bytestream=True)
    return np.array([record[f"simple_word_{i}"] for i in range(63)], dtype=np.int64)


@pytest.fixture(scope="module")
def corpus(photo_paths: list[Path]) -> list[tuple[str, bytes, npt.NDArray[np.int8]]]:
    """(name, bytes, oracle signature) of every photograph."""
    return [(path.name, data, oracle_signature(data))
            for path in photo_paths for data in [path.read_bytes()]]


# --- equivalence with image-match ----------------------------------------------------


@pytest.mark.slow
def test_signatures_equal_image_match_on_real_photos(
        corpus: list[tuple[str, bytes, npt.NDArray[np.int8]]]) -> None:
    """On every photograph of the corpus: the same signature, through both inputs."""
    assert len(corpus) >= 50
    identical = 0
    worst = 0.0
    for _name, data, expected in corpus:
        fast = signature.generate(image.load_rgb(data))
        assert fast.dtype == np.int8 and fast.shape == (signature.SIGNATURE_LENGTH,)
        grey = signature.generate(image.load_grey(data))
        identical += bool(np.array_equal(fast, expected) and np.array_equal(grey, expected))
        worst = max(worst, signature.distance(fast, expected), signature.distance(grey, expected))
    assert identical >= 0.99 * len(corpus), f"only {identical}/{len(corpus)} identical"
    assert worst <= 0.02


def test_words_equal_image_match_make_record(
        corpus: list[tuple[str, bytes, npt.NDArray[np.int8]]]) -> None:
    identical = sum(
        bool(np.array_equal(signature.words(signature.generate(image.load_rgb(data))),
                            oracle_words(expected)))
        for _name, data, expected in corpus)
    assert identical >= 0.99 * len(corpus), f"only {identical}/{len(corpus)} identical"


def test_words_batch_equals_rows(corpus: list[tuple[str, bytes, npt.NDArray[np.int8]]]) -> None:
    matrix = np.stack([expected for _name, _data, expected in corpus[:10]])
    batch = signature.words(matrix)
    assert batch.shape == (10, signature.N_WORDS) and batch.dtype == np.int64
    for row, words in zip(matrix, batch, strict=True):
        assert np.array_equal(signature.words(row), words)


def _oracle_quiet(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.int8]:
    """image-match's signature of RGB pixels (its numpy warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result: npt.NDArray[np.int8] = ORACLE.generate_signature(pixels)
    return result


def _synthetic_images() -> dict[str, npt.NDArray[np.uint8]]:
    """Awkward inputs for the crop and the thresholds, as uint8 RGB."""
    rng = np.random.default_rng(2024)
    yy, xx = np.indices((400, 400))
    cases: dict[str, npt.NDArray[np.uint8]] = {
        "flat": np.full((100, 120, 3), 77, np.uint8),
        "black-white": np.repeat(((xx[:200, :300] >= 150) * 255).astype(np.uint8)[..., None], 3, 2),
        "checker": np.repeat((((yy + xx) // 50) % 2 * 255).astype(np.uint8)[..., None], 3, 2),
        "gradient": np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (100, 1, 3)),
    }
    for height, width in [(1, 1), (1, 50), (50, 1), (2, 2), (3, 7), (15, 40), (16, 16),
                          (17, 33), (40, 1000), (1000, 45), (181, 181), (1811, 1900)]:
        cases[f"noise-{height}x{width}"] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cases


@pytest.mark.parametrize("name", sorted(_synthetic_images()))
def test_synthetic_images_equal_image_match(name: str) -> None:
    pixels = _synthetic_images()[name]
    mine = signature.generate(pixels)  # outside any warnings filter: must not warn
    assert np.array_equal(mine, _oracle_quiet(pixels))
    assert np.array_equal(signature.generate(image.rgb_to_grey(pixels)), mine)


def test_borders_and_large_windows_equal_image_match(photo_paths: list[Path]) -> None:
    """Letterboxed photos (flat rows and columns: the crop walks them) and photos whose
    P x P squares exceed numpy's reduction buffer (P > 90: the per-square path)."""
    photo = Image.open(photo_paths[0]).convert("RGB")
    small = np.asarray(photo.resize((640, 360)))
    cases = [
        np.pad(small, ((120, 120), (0, 0), (0, 0))),
        np.pad(small, ((0, 0), (200, 200), (0, 0)), constant_values=255),
        np.pad(small, ((30, 30), (30, 30), (0, 0)), mode="edge"),
        np.asarray(photo.resize((2100, 1900))),
        np.asarray(photo.resize((1900, 1811))),
    ]
    for pixels in cases:
        assert np.array_equal(signature.generate(pixels), _oracle_quiet(pixels))


def test_percentile_weights_are_exact_or_far_from_whole() -> None:
    """What the lazy crop relies on (match/signature.py's docstring): numpy's 5th and
    95th percentiles of n sorted values interpolate with a weight of exactly 0 or one
    well away from 0 and 1. Guards a numpy upgrade."""
    for n in [*range(1, 3001), *range(3001, 40_001, 97)]:
        for percentile in signature.CROP_PERCENTILES:
            position = float(np.percentile(np.arange(n, dtype=np.float64), percentile))
            weight = position - np.floor(position)
            assert weight == 0.0 or 0.04 < weight < 0.96, (n, percentile, weight)


def test_strided_means_sum_like_contiguous_copies_within_the_buffer() -> None:
    """The other premise (match/signature.py's _mean_levels): numpy sums a strided P x P
    slice like its contiguous copy when P * P fits its reduction buffer. Guards a numpy
    upgrade."""
    rng = np.random.default_rng(7)
    image_like = rng.random((200, 230))
    for size in range(2, 91):
        for top, left in ((0, 0), (3, 17), (200 - size, 230 - size)):
            window = image_like[top:top + size, left:left + size]
            contiguous = np.ascontiguousarray(window).reshape(-1)
            assert np.mean(window) == np.add.reduce(contiguous) / float(size * size), size


def test_grey_of_a_part_equals_the_part_of_the_grey() -> None:
    """The third premise: skimage's rgb2gray (a BLAS product per row) gives each pixel
    the same float wherever it lies, for rows of at least two pixels."""
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (300, 1003, 3), dtype=np.uint8)
    whole = image.rgb_to_grey(rgb)
    for _ in range(200):
        top, left = (int(v) for v in rng.integers(0, 290, 2))
        height, width = (int(v) for v in rng.integers(2, 10, 2))
        part = np.ascontiguousarray(rgb[top:top + height, left:left + width * 50])
        assert np.array_equal(image.rgb_to_grey(part),
                              whole[top:top + height, left:left + width * 50])


# --- the 8 orientations --------------------------------------------------------------


def test_generate_all_rows_are_signatures_of_transposed_copies(photo_paths: list[Path]) -> None:
    for path in photo_paths[::15]:
        photo = Image.open(path).convert("RGB")
        rows = signature.generate_all(np.asarray(photo))
        assert rows.shape == (8, signature.SIGNATURE_LENGTH) and rows.dtype == np.int8
        for row, transpose in TRANSPOSES.items():
            moved = photo if transpose is None else photo.transpose(transpose)
            assert np.array_equal(rows[row], signature.generate(np.asarray(moved))), (path, row)
        # The grey input gives the same 8 rows.
        assert np.array_equal(signature.generate_all(image.rgb_to_grey(np.asarray(photo))), rows)


def test_any_view_signs_like_its_contiguous_copy(photo_paths: list[Path]) -> None:
    """Strided, reversed, transposed and Fortran-ordered inputs, RGB and grey."""
    rgb = np.asarray(Image.open(photo_paths[2]).convert("RGB").resize((700, 500)))
    grey = image.rgb_to_grey(rgb)
    views = [rgb[::2, ::3], rgb[::-1, 5:], rgb[:, ::-2], rgb.swapaxes(0, 1)[::-1],
             np.asfortranarray(rgb), grey.T, grey[::-1, ::-1], np.asfortranarray(grey)[3:, 7:]]
    for view in views:
        assert np.array_equal(signature.generate(view),
                              signature.generate(np.ascontiguousarray(view)))


def test_generate_all_of_a_turned_view_equals_that_of_its_copy(photo_paths: list[Path]) -> None:
    rgb = np.asarray(Image.open(photo_paths[4]).convert("RGB").resize((640, 400)))
    for view in (np.rot90(rgb), rgb[::-1], rgb.swapaxes(0, 1), np.rot90(rgb, 3)[:, ::-1]):
        assert np.array_equal(signature.generate_all(view),
                              signature.generate_all(np.ascontiguousarray(view)))


def test_generate_all_row_0_is_generate(corpus: list[tuple[str, bytes, npt.NDArray[np.int8]]]) -> None:
    _name, data, expected = corpus[0]
    assert np.array_equal(signature.generate_all(image.load_rgb(data))[0], expected)


# --- distance ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(corpus: list[tuple[str, bytes, npt.NDArray[np.int8]]]) -> npt.NDArray[np.int8]:
    return np.stack([expected for _name, _data, expected in corpus])


def test_distance_properties(matrix: npt.NDArray[np.int8]) -> None:
    for a in matrix[:20]:
        assert signature.distance(a, a) == 0.0
        for b in matrix[20:30]:
            d = signature.distance(a, b)
            assert 0.0 <= d <= 1.0
            assert d == signature.distance(b, a)
    assert signature.distance(matrix[0], -matrix[0]) == 1.0


def test_featureless_signatures_are_never_close(matrix: npt.NDArray[np.int8]) -> None:
    zero = np.zeros(signature.SIGNATURE_LENGTH, np.int8)
    assert signature.distance(zero, zero) == 1.0
    assert signature.distance(zero, matrix[0]) == 1.0
    assert signature.distances(zero, np.stack([zero, matrix[0]])).tolist() == [1.0, 1.0]


def test_distance_equals_image_match(matrix: npt.NDArray[np.int8]) -> None:
    """Bit for bit: image-match's pairwise and vectorized normalized distances."""
    for a in matrix[:10]:
        expected = oracle_distances(matrix, a)
        assert np.array_equal(signature.distances(a, matrix), expected)
        for b in matrix[:10]:
            if a is not b:
                assert signature.distance(a, b) == ORACLE.normalized_distance(a, b)


def test_distances_vectorized_equals_scalar(matrix: npt.NDArray[np.int8]) -> None:
    query = matrix[3]
    scalar = np.array([signature.distance(query, row) for row in matrix])
    as_int8 = signature.distances(query, matrix)
    as_float32 = signature.distances(query, matrix.astype(np.float32))
    with_norms = signature.distances(query, matrix.astype(np.float32), signature.norms(matrix))
    assert as_int8.shape == (len(matrix),) and as_int8.dtype == np.float64
    for result in (as_int8, as_float32, with_norms):
        assert np.array_equal(result, scalar)
    stacked = signature.distances(matrix[:8], matrix)
    assert stacked.shape == (8, len(matrix))
    for row, query_row in zip(stacked, matrix[:8], strict=True):
        assert np.array_equal(row, signature.distances(query_row, matrix))


def test_norms_are_l2(matrix: npt.NDArray[np.int8]) -> None:
    assert np.array_equal(signature.norms(matrix),
                          np.linalg.norm(matrix.astype(np.float64), axis=1))


def test_constants() -> None:
    assert (signature.SIGNATURE_LENGTH, signature.N_WORDS, signature.WORD_LENGTH) == (648, 63, 16)
    assert signature.DEFAULT_CUTOFF == 0.45


@pytest.mark.parametrize("bad", [
    np.zeros((10, 10), dtype=np.uint8),        # 2-D but not float
    np.zeros((10, 10, 4), dtype=np.uint8),     # RGBA
    np.zeros((10, 10, 3), dtype=np.float64),   # float RGB
    np.zeros((0, 10), dtype=np.float64),       # empty
])
def test_generate_rejects_other_arrays(bad: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError):
        signature.generate(bad)


def test_words_and_distances_reject_wrong_shapes() -> None:
    with pytest.raises(ValueError):
        signature.words(np.zeros(10, np.int8))
    with pytest.raises(ValueError):
        signature.distances(np.zeros(648, np.int8), np.zeros((3, 10), np.int8))
