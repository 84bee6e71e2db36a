"""Image decoding: bytes in, the pixels image-match would sign out. The Pillow edge.

image-match 1.1.2 signs uploaded bytes with ``Image.open(BytesIO(data)).convert("RGB")``
then skimage's ``rgb2gray``. :func:`load_rgb` returns exactly those RGB pixels and
:func:`load_grey` exactly that grey image, so signatures match image-match's bit for
bit. :func:`match.signature.generate` accepts either; the RGB pixels are the fast path
(the grey levels are then computed only where the signature reads them).

What is decoded
    Every pixel mode Pillow reads (L, P, RGB, RGBA, CMYK, I;16, I, F, LA, PA, 1,
    YCbCr, LAB...) through Pillow's own ``convert("RGB")``, as image-match does: alpha
    is dropped (not composited), 16-bit and float values are clipped to 0..255. For an
    animated GIF/WebP/PNG or an MPO (stereo pair from a camera) the first frame is
    signed. The formats are :data:`FORMATS`; anything else -- text, SVG, PDF, EPS (which
    Pillow would hand to Ghostscript), empty bytes -- is refused.

Errors (all from :mod:`match.errors`; no Pillow exception or warning escapes)
    ``UnsupportedImage`` (415)
        not an image in one of :data:`FORMATS`.
    ``InvalidImage`` (422)
        starts like one (by its magic bytes or Pillow's own identification) but is
        truncated or corrupt.
    ``ImageTooLarge`` (413)
        more than ``max_pixels`` pixels by the size in its header, checked before any
        pixel is decoded; also when Pillow's own decompression-bomb guard fires.

    Pillow's warnings are caught with ``warnings.catch_warnings``, which is
    process-global before Python 3.14: fine for match's sync workers and process pools,
    racy if several threads decode at once.

EXIF orientation
    Ignored by default, like image-match: a phone photo stored sideways with an
    orientation tag is signed sideways. ``exif_transpose=True`` applies the tag first
    (Pillow's ``ImageOps.exif_transpose``), so it is signed as displayed. docs/
    signatures.md gives the measurement behind the default.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from match.errors import ImageTooLarge, InvalidImage, UnsupportedImage

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "ImageInfo",
    "image_info",
    "load_grey",
    "load_rgb",
    "rgb_to_grey",
]

#: Default pixel limit (width x height of the first frame), as MATCH_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 50_000_000

#: Pillow formats match decodes (Pillow's names). APNG is "PNG"; MPO is a JPEG pair.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA")

#: Leading bytes of the formats above that cannot be mistaken for text, and the
#: format each announces: bytes starting like this are a damaged image (422), not an
#: unsupported one (415).
_MAGIC_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                  (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
                  (b"\x00\x00\x01\x00", "ICO"))


def _claimed_format(data: bytes) -> str | None:
    """The format ``data`` claims by its leading bytes (None: no known magic)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC_FORMATS:
        if data.startswith(magic):
            return name
    return None


#: skimage's rgb2gray weights, applied to ``uint8 / 255`` (``img_as_float``).
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)


class ImageInfo(NamedTuple):
    """What the header says: Pillow's format name and the first frame's size."""

    format: str
    width: int
    height: int


def image_info(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = 0,
               formats: Sequence[str] = FORMATS) -> ImageInfo:
    """Format and size from the header alone (no pixel is decoded).

    Raises ``UnsupportedImage``, ``InvalidImage`` or ``ImageTooLarge`` as
    :func:`load_rgb` would for the same bytes' header.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, max_pixels, max_side, formats)
        with image:
            return ImageInfo(str(image.format), image.width, image.height)


def load_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = False,
             max_side: int = 0, formats: Sequence[str] = FORMATS) -> npt.NDArray[np.uint8]:
    """Decode image bytes to RGB pixels: ``uint8``, shape ``(height, width, 3)``.

    The same array as image-match's ``np.asarray(Image.open(...).convert("RGB"))``
    (first frame; EXIF orientation applied only with ``exif_transpose=True``).
    ``max_side`` (0: none) caps the width and the height; ``formats`` (a subset of
    :data:`FORMATS`) narrows what is decoded.
    """
    with warnings.catch_warnings():
        # A DecompressionBombWarning becomes an error (ImageTooLarge below); the other
        # warnings Pillow gives on odd files (palette transparency, malformed MPO or
        # EXIF) are about files we decode anyway, and must not reach the caller.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, max_pixels, max_side, formats)
        with image:
            try:
                image.load()
                if exif_transpose:
                    image = ImageOps.exif_transpose(image)
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                pixels = np.asarray(rgb, dtype=np.uint8)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageTooLarge(f"image too large to decode safely: {exc}") from exc
            except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError,
                    EOFError, MemoryError, ZeroDivisionError) as exc:
                raise InvalidImage(f"corrupt or truncated {image.format} image: {exc}") from exc
    return pixels


def load_grey(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              exif_transpose: bool = False) -> npt.NDArray[np.float64]:
    """Decode image bytes to the grey image image-match signs: ``float64`` in [0, 1].

    Equal, bit for bit, to image-match's ``preprocess_image(data, bytestream=True)``.
    :func:`load_rgb` gives the same signature faster (see the module docstring).
    """
    return rgb_to_grey(load_rgb(data, max_pixels=max_pixels, exif_transpose=exif_transpose))


def rgb_to_grey(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """skimage's ``rgb2gray`` for uint8 RGB, operation for operation."""
    grey: npt.NDArray[np.float64] = np.multiply(rgb, 1.0 / 255, dtype=np.float64) @ _GREY_WEIGHTS
    return grey


@functools.cache
def _open_formats(formats: tuple[str, ...] = FORMATS) -> tuple[str, ...]:
    """``formats`` that have an opener of their own (an MPO is opened by the JPEG one)."""
    Image.init()
    return tuple(name for name in formats if name in FORMATS and name in Image.OPEN)


def _open(data: bytes, max_pixels: int, max_side: int = 0,
          formats: Sequence[str] = FORMATS) -> Image.Image:
    """``Image.open`` restricted to FORMATS, with the pixel limit checked on the header.

    Call it under ``warnings.catch_warnings`` with DecompressionBombWarning as an error.
    """
    if not data:
        raise UnsupportedImage("empty body: no image")
    try:
        image = Image.open(io.BytesIO(data), formats=_open_formats(tuple(formats)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        claimed = _claimed_format(data)
        if claimed is not None and claimed not in formats:
            raise UnsupportedImage(f"{claimed} images are not accepted here ({', '.join(formats)})") from exc
        if claimed is not None:
            raise InvalidImage("corrupt or truncated image: its header cannot be read") from exc
        raise UnsupportedImage("not an image in a supported format "
                               f"({', '.join(formats)})") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError,
            MemoryError, ZeroDivisionError) as exc:
        raise InvalidImage(f"corrupt image header: {exc}") from exc
    if image.format == "MPO" and "MPO" not in formats or image.format == "JPEG" and "JPEG" not in formats:
        # One opener reads both: refuse the one the operator did not allow.
        image.close()
        raise UnsupportedImage(f"{image.format} images are not accepted here ({', '.join(formats)})")
    if max_side and max(image.width, image.height) > max_side:
        image.close()
        raise ImageTooLarge(f"image is {image.width}x{image.height}; the longest side may be at most "
                            f"{max_side} pixels (MATCH_MAX_IMAGE_SIDE)")
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise ImageTooLarge(f"image is {image.width}x{image.height} = {pixels} pixels, "
                            f"more than the limit of {max_pixels}")
    return image
