"""match.image: decoding every mode and container like image-match, and refusing the rest.

image-match 1.1.2 (the oracle) signs bytes with ``Image.open(...).convert("RGB")`` and
skimage's ``rgb2gray``; every decoded image here is checked against it.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from image_match.goldberg import ImageSignature
from PIL import Image

from match import image, signature
from match.errors import ImageTooLarge, InvalidImage, UnsupportedImage

ORACLE = ImageSignature()


def oracle_grey(data: bytes) -> npt.NDArray[np.float64]:
    """image-match's grey image of bytes (its Pillow warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grey: npt.NDArray[np.float64] = ORACLE.preprocess_image(data, bytestream=True)
    return grey


def encode(picture: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo(photo_paths: list[Path]) -> Image.Image:
    """A real photograph, 320x240 RGB."""
    return Image.open(photo_paths[0]).convert("RGB").resize((320, 240))


@pytest.fixture(scope="module")
def other_photo(photo_paths: list[Path]) -> Image.Image:
    return Image.open(photo_paths[1]).convert("RGB").resize((320, 240))


def assert_like_image_match(data: bytes) -> npt.NDArray[np.uint8]:
    """load_rgb / load_grey / the signature all equal image-match's for ``data``."""
    rgb = image.load_rgb(data)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    expected = oracle_grey(data)
    assert np.array_equal(image.rgb_to_grey(rgb), expected)
    assert np.array_equal(image.load_grey(data), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_signature = ORACLE.generate_signature(data, bytestream=True)
    assert np.array_equal(signature.generate(rgb), expected_signature)
    return rgb


# --- real photographs ----------------------------------------------------------------


def test_grey_equals_image_match_on_real_photos(photo_paths: list[Path]) -> None:
    for path in photo_paths[::4]:
        data = path.read_bytes()
        assert np.array_equal(image.load_grey(data), oracle_grey(data)), path.name


# --- every pixel mode ----------------------------------------------------------------

# (mode, container): every mode Pillow produces from files, in a format that keeps it.
MODES = [
    ("L", "PNG"), ("L", "JPEG"), ("P", "PNG"), ("P", "GIF"), ("P", "BMP"), ("RGB", "PNG"),
    ("RGB", "TIFF"), ("RGB", "BMP"), ("RGB", "WEBP"), ("RGBA", "PNG"), ("RGBA", "TIFF"),
    ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF"),
    ("F", "TIFF"), ("LA", "PNG"), ("LA", "TIFF"), ("PA", "TIFF"), ("1", "PNG"), ("1", "TIFF"),
    ("1", "BMP"), ("YCbCr", "TIFF"), ("LAB", "TIFF"), ("RGB", "PPM"), ("L", "PPM"),
    ("RGBA", "TGA"), ("RGBA", "ICO"),
]


def _in_mode(picture: Image.Image, mode: str) -> Image.Image:
    if mode == "PA":
        return picture.convert("P").convert("PA")
    if mode in ("I;16", "I", "F"):
        return picture.convert("L").convert(mode)
    if mode in ("RGBA", "LA"):
        # A real alpha channel (varying), which image-match drops without compositing.
        alpha = picture.convert("L").point(lambda v: 255 - v)
        converted = picture.convert(mode)
        converted.putalpha(alpha)
        return converted
    return picture.convert(mode)


@pytest.mark.parametrize(("mode", "fmt"), MODES, ids=[f"{m}-{f}" for m, f in MODES])
def test_every_mode_decodes_like_image_match(photo: Image.Image, mode: str, fmt: str) -> None:
    data = encode(_in_mode(photo, mode), fmt)
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
    except OSError:
        # Some Pillow versions write files they cannot read back (Pillow 12: YCbCr
        # TIFF); image-match fails on them too, and match says why.
        with pytest.raises(InvalidImage):
            image.load_rgb(data)
        return
    if fmt not in ("JPEG", "WEBP", "GIF", "ICO"):  # the lossless containers keep the mode
        assert Image.open(io.BytesIO(data)).mode in (mode, "RGB" if mode == "YCbCr" else mode)
    rgb = assert_like_image_match(data)
    assert rgb.shape[:2] == (photo.height, photo.width) or fmt == "ICO"


def test_sixteen_bit_png_keeps_image_match_clipping(photo: Image.Image) -> None:
    """16-bit values over 255 are clipped to white by Pillow's convert, as in image-match."""
    wide = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    data = encode(wide, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert_like_image_match(data)


def test_palette_with_transparency_does_not_warn(photo: Image.Image) -> None:
    paletted = photo.convert("P")
    data = encode(paletted, "PNG", transparency=bytes(range(256)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image.load_rgb(data)
    assert_like_image_match(data)


def test_grey_photo_equals_image_match(photo: Image.Image) -> None:
    """An L image goes L -> RGB -> grey as in image-match (not straight to v / 255)."""
    data = encode(photo.convert("L"), "PNG")
    rgb = assert_like_image_match(data)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


# --- containers with several frames --------------------------------------------------


def test_animated_gif_signs_the_first_frame(photo: Image.Image, other_photo: Image.Image) -> None:
    data = encode(photo, "GIF", save_all=True, append_images=[other_photo], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    rgb = assert_like_image_match(data)
    first = encode(photo, "GIF")
    assert signature.distance(signature.generate(rgb),
                              signature.generate(image.load_rgb(first))) < 0.1
    assert signature.distance(signature.generate(rgb),
                              signature.generate(np.asarray(other_photo))) > 0.3


def test_animated_webp_signs_the_first_frame(photo: Image.Image, other_photo: Image.Image) -> None:
    data = encode(photo, "WEBP", save_all=True, append_images=[other_photo], lossless=True)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    rgb = assert_like_image_match(data)
    assert np.array_equal(rgb, np.asarray(photo))


def test_mpo_signs_the_first_image(photo: Image.Image, other_photo: Image.Image) -> None:
    data = encode(photo, "MPO", save_all=True, append_images=[other_photo], quality=95)
    opened = Image.open(io.BytesIO(data))
    assert opened.format == "MPO" and getattr(opened, "n_frames", 1) == 2
    rgb = assert_like_image_match(data)
    assert signature.distance(signature.generate(rgb), signature.generate(np.asarray(photo))) < 0.1
    assert image.image_info(data) == image.ImageInfo("MPO", 320, 240)


# --- refusals ------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB, with a few bytes of pixel data only."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [100_000, 20_000, 10_000])
def test_pixel_limit_is_checked_before_decoding(side: int) -> None:
    """The header alone (no pixel data follows, so decoding would fail differently)
    triggers ImageTooLarge: by the limit, or by Pillow's bomb error (20k) or warning
    (10k = 100 MP, over Pillow's 89 MP warning threshold) -- no warning leaks."""
    data = _png_header(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge):
            image.load_rgb(data, max_pixels=10 ** 12)
        with pytest.raises(ImageTooLarge):
            image.load_rgb(data)
        with pytest.raises(ImageTooLarge):
            image.image_info(data)


def test_pixel_limit_is_configurable(photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    with pytest.raises(ImageTooLarge, match="76800 pixels"):
        image.load_rgb(data, max_pixels=320 * 240 - 1)
    assert image.load_rgb(data, max_pixels=320 * 240).shape == (240, 320, 3)


def test_truncated_jpeg_is_invalid(photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    for cut in (len(data) // 2, 600, 20, 4):
        with pytest.raises(InvalidImage):
            image.load_rgb(data[:cut])


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_or_corrupt_images_are_invalid(photo: Image.Image, fmt: str) -> None:
    data = encode(photo, fmt)
    with pytest.raises(InvalidImage):
        image.load_rgb(data[: len(data) // 2])
    header = 64
    garbage = data[:header] + bytes(b ^ 0x5A for b in data[header:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with contextlib.suppress(InvalidImage):  # most formats notice; some decode noise
            image.load_rgb(garbage)


@pytest.mark.parametrize("data", [
    b"",
    b"hello, world\n",
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='5' height='5'/></svg>",
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
    b"\x00" * 100,
], ids=["empty", "text", "svg-xml", "svg", "pdf", "eps", "zeros"])
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        image.load_rgb(data)
    with pytest.raises(UnsupportedImage):
        image.image_info(data)


def test_errors_carry_http_statuses() -> None:
    assert (UnsupportedImage.status, InvalidImage.status, ImageTooLarge.status) == (415, 422, 413)


def test_image_info_reads_the_header_only(photo: Image.Image) -> None:
    assert image.image_info(encode(photo, "PNG")) == ("PNG", 320, 240)
    # A header with no pixel data is enough.
    assert image.image_info(_png_header(640, 480)) == ("PNG", 640, 480)


# --- EXIF orientation ----------------------------------------------------------------

# EXIF orientation 6: "rotate 90 degrees clockwise to display". Pixels stored rotated
# 90 degrees counter-clockwise (Pillow's ROTATE_90) with this tag display upright.
ORIENTATION = 0x0112


def _phone_style(picture: Image.Image, fmt: str) -> bytes:
    """``picture`` stored sideways with the EXIF tag that displays it upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    options: dict[str, object] = {"exif": exif}
    if fmt == "JPEG":
        options["quality"] = 95
    return encode(picture.transpose(Image.Transpose.ROTATE_90), fmt, **options)


def test_exif_orientation_is_ignored_by_default(photo: Image.Image) -> None:
    data = _phone_style(photo, "PNG")
    sideways = image.load_rgb(data)
    assert np.array_equal(sideways, np.asarray(photo.transpose(Image.Transpose.ROTATE_90)))
    assert_like_image_match(data)


def test_exif_transpose_signs_the_image_as_displayed(photo: Image.Image) -> None:
    data = _phone_style(photo, "PNG")
    upright = image.load_rgb(data, exif_transpose=True)
    assert np.array_equal(upright, np.asarray(photo))
    assert np.array_equal(image.load_grey(data, exif_transpose=True), image.rgb_to_grey(upright))


def test_sideways_phone_photos_match_upright_copies(photo_paths: list[Path]) -> None:
    """The measurement behind the default (docs/signatures.md): a sideways JPEG with an
    orientation tag against an upright re-save of the same photo. Ignoring the tag,
    plain search misses it but the 8-orientation search finds it (generate_all holds
    the upright signature); applying the tag, plain search finds it."""
    for path in photo_paths[::20]:
        upright = Image.open(path).convert("RGB")
        stored = signature.generate(np.asarray(upright))
        data = _phone_style(upright, "JPEG")
        ignored = signature.generate_all(image.load_rgb(data))
        applied = signature.generate(image.load_rgb(data, exif_transpose=True))
        assert signature.distance(ignored[0], stored) > signature.DEFAULT_CUTOFF
        assert signature.distances(ignored, stored[np.newaxis]).min() < 0.2
        assert signature.distance(applied, stored) < 0.2
