"""Thumbnails of indexed images, for the web UI.

A store keeps signatures, not pixels, so the UI would have nothing to show for a match.
With ``MATCH_THUMBNAILS`` on (the default), :func:`match.service.add` calls :func:`save`
after the upsert: a JPEG whose longest side is ``MATCH_THUMBNAIL_SIZE`` (256) pixels,
written to ``<MATCH_DATA_DIR>/thumbs/<sha256 of the image bytes>.jpg``; every record's
metadata carries that digest (``sha256``), so a search hit finds its thumbnail without
another lookup. Content addressing also means a thumbnail can never show the wrong
image: a filepath re-added with other bytes gets another file, and an orphan left by a
delete that did not remove it (the JSON API's ``/delete``) is never shown for anything
else. :func:`match.service.delete` calls :func:`remove` when it is given the settings.

Two filepaths may hold the very same bytes, so share one thumbnail: each add
claims it (:func:`claim`) for its filepath (an empty marker file,
``thumbs/refs/<digest>/<sha256 of the filepath>``), and :func:`remove` deletes the
JPEG only when the last filepath lets go of it. Claims and removals of one digest take
an ``flock`` (one of 256 lock files, by the digest's first byte), so a removal can't
delete a thumbnail another process has just claimed. Thumbnails written before claims
existed have none, and go with the first delete, as they always did.

Cost: about 10-20 KB per image at 256 px (quality 80; see docs/web.md for the numbers
measured on the test photos) and a few milliseconds per add (JPEG draft mode decodes
at 1/2-1/8 scale). A thumbnail never fails an add: any error is logged and the UI falls
back to the source URL or a placeholder.

No Flask here: the service (HTTP and CLI) calls this module directly.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["is_key", "path", "exists", "save", "claim", "remove", "make", "data_uri"]

log = logging.getLogger(__name__)

#: JPEG quality of thumbnails (80: small, no visible blocking at 256 px).
QUALITY = 80


def is_key(sha256: object) -> bool:
    """Whether ``sha256`` is a thumbnail name: 64 lower-case hex characters."""
    return (isinstance(sha256, str) and len(sha256) == 64
            and all(c in "0123456789abcdef" for c in sha256))


def directory(settings: Mapping[str, Any]) -> Path:
    """``<MATCH_DATA_DIR>/thumbs``."""
    return Path(str(settings["MATCH_DATA_DIR"])) / "thumbs"


def path(settings: Mapping[str, Any], sha256: str) -> Path:
    """Where the thumbnail of the image with this digest is (or would be).

    Raises ValueError unless ``sha256`` :func:`is_key`.
    """
    if not is_key(sha256):
        raise ValueError("a thumbnail is named by a hex SHA-256 digest")
    return directory(settings) / f"{sha256}.jpg"


def exists(settings: Mapping[str, Any], sha256: object) -> bool:
    """Whether the image with this digest has a thumbnail."""
    return is_key(sha256) and path(settings, str(sha256)).is_file()


def make(data: bytes, size: int) -> bytes:
    """A JPEG at most ``size`` pixels on its longest side (EXIF orientation applied).

    Raises whatever Pillow raises for bytes it can't decode.
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        # Decode a JPEG at a reduced scale straight away: far less work for big photos.
        image.draft("RGB", (size, size))
        picture = ImageOps.exif_transpose(image).convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def save(settings: Mapping[str, Any], data: bytes, sha256: str | None = None) -> Path | None:
    """Write the thumbnail of the image ``data``; None when off or on error.

    ``sha256`` is the digest of ``data`` when the caller has it. Atomic (temp file, then
    rename), so a reader never sees half a JPEG; an existing thumbnail is kept.
    """
    if not settings.get("MATCH_THUMBNAILS"):
        return None
    target = path(settings, sha256 or hashlib.sha256(data).hexdigest())
    if target.is_file():
        return target
    try:
        thumb = make(data, int(settings.get("MATCH_THUMBNAIL_SIZE") or 256))
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.stem}.{os.getpid()}.tmp")
        temp.write_bytes(thumb)
        temp.replace(target)
    except Exception as exc:  # Pillow and the file system raise many types; never fail the add
        log.warning("no thumbnail for image %s: %s", target.stem, exc)
        return None
    return target


def _refs(settings: Mapping[str, Any], sha256: str) -> Path:
    """The directory of the claims on the thumbnail ``sha256``."""
    return directory(settings) / "refs" / sha256


def _claim_name(filepath: str) -> str:
    return hashlib.sha256(filepath.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _locked(settings: Mapping[str, Any], sha256: str) -> Iterator[None]:
    """Hold the (striped) lock of the claims on ``sha256``."""
    lock = directory(settings) / "refs" / f".lock-{sha256[:2]}"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(settings: Mapping[str, Any], sha256: object, filepath: str) -> None:
    """Record that ``filepath`` shows the thumbnail ``sha256`` (see the module docstring).

    Never raises: a claim that can't be written is logged, and costs at most that the
    thumbnail goes when another filepath with the same bytes is deleted.
    """
    if not settings.get("MATCH_THUMBNAILS") or not is_key(sha256):
        return
    try:
        with _locked(settings, str(sha256)):
            refs = _refs(settings, str(sha256))
            refs.mkdir(parents=True, exist_ok=True)
            (refs / _claim_name(filepath)).touch()
    except OSError as exc:
        log.warning("could not claim thumbnail %s: %s", sha256, exc)


def remove(settings: Mapping[str, Any], sha256: object, filepath: str | None = None) -> None:
    """Let ``filepath`` go of the thumbnail ``sha256``; delete it if no filepath still
    claims it (without ``filepath``: delete it whatever claims it).
    """
    if not is_key(sha256):
        return
    key = str(sha256)
    try:
        with _locked(settings, key):
            refs = _refs(settings, key)
            if filepath is not None:
                (refs / _claim_name(filepath)).unlink(missing_ok=True)
                if refs.is_dir() and any(refs.iterdir()):
                    return  # another filepath holds the same bytes: it keeps the thumbnail
            if refs.is_dir():
                for ref in refs.iterdir():
                    ref.unlink(missing_ok=True)
                refs.rmdir()
            path(settings, key).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove thumbnail %s: %s", sha256, exc)


def data_uri(data: bytes, size: int = 320) -> str | None:
    """An inline ``data:image/jpeg;base64,...`` preview of image bytes (None if undecodable).

    For images the server does not keep: a search's query, the two sides of a compare.
    """
    try:
        thumb = make(data, size)
    except Exception:  # undecodable: the page says so instead
        return None
    return "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii")
