"""Images sent to workers: kept by match, served at unguessable, expiring URLs.

A worker must be able to open both images of a pair. A search's query image exists only
in the request, so match keeps a copy of every image it sends out:

* ``local`` (default): files under ``<MATCH_DATA_DIR>/crowd-media/``, named by a key
  that is an HMAC of the content (the same image is kept once; nobody without the
  secret can derive a key from an image). The URL is
  ``<MATCH_CROWD_PUBLIC_URL>/crowd/media/<key>?expires=<epoch>&sig=<hmac>`` and the
  Tasks API blueprint serves it (:func:`match.crowd.api`) only while ``expires`` is in
  the future and the signature matches: a URL can neither be guessed nor outlive its
  HIT by more than the TTL.
* ``s3``: objects in ``MATCH_CROWD_S3_BUCKET``, handed out as presigned URLs (boto3,
  through :class:`match.crowd.mturk.S3Media`, the one AWS module).

The secret is ``MATCH_CROWD_SECRET``; when it is empty a random one is made once and
kept in ``<MATCH_DATA_DIR>/crowd-secret`` (mode 0600), so URLs survive restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from match.errors import BadRequest, NotFound

__all__ = ["MediaStore", "load_secret", "sniff_type", "transformed_copy"]

_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"GIF8": "image/gif", b"RIFF": "image/webp"}


def sniff_type(data: bytes) -> str:
    """The image MIME type from magic bytes (``application/octet-stream`` if unknown)."""
    for magic, mime in _TYPES.items():
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def load_secret(config: Mapping[str, Any]) -> bytes:
    """``MATCH_CROWD_SECRET``, or a random secret kept in the data directory."""
    configured = str(config.get("MATCH_CROWD_SECRET") or "")
    if configured:
        return configured.encode()
    path = Path(config["MATCH_DATA_DIR"]) / "crowd-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class MediaStore:
    """Keeps image bytes and hands out URLs workers can open for a while.

    Example::

        media = MediaStore.from_config(config)
        key = media.keep(jpeg_bytes)
        url = media.url(key, ttl=3600)   # .../crowd/media/<key>?expires=...&sig=...
    """

    def __init__(
        self,
        root: str | Path,
        secret: bytes,
        public_url: str,
        *,
        backend: str = "local",
        s3: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.root = Path(root)
        self.secret = secret
        self.public_url = public_url.rstrip("/")
        self.backend = backend
        self.s3 = s3
        self.clock = clock

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, clock: Any = time.time) -> MediaStore:
        """Build from settings (``MATCH_CROWD_MEDIA``, ``MATCH_CROWD_PUBLIC_URL`` ...)."""
        backend = str(config.get("MATCH_CROWD_MEDIA", "local"))
        s3 = None
        if backend == "s3":
            from match.crowd.mturk import S3Media

            if not config.get("MATCH_CROWD_S3_BUCKET"):
                raise ValueError("MATCH_CROWD_MEDIA=s3 needs MATCH_CROWD_S3_BUCKET")
            s3 = S3Media(str(config["MATCH_CROWD_S3_BUCKET"]))
        public = str(
            config.get("MATCH_CROWD_PUBLIC_URL")
            or f"http://{config.get('MATCH_HOST', '127.0.0.1')}:{config.get('MATCH_PORT', 8000)}"
        )
        return cls(
            Path(config["MATCH_DATA_DIR"]) / "crowd-media",
            load_secret(config),
            public,
            backend=backend,
            s3=s3,
            clock=clock,
        )

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def keep(self, data: bytes) -> str:
        """Keep ``data``; returns its key (32 hex chars, unguessable without the secret)."""
        if not data:
            raise BadRequest("an empty image can't be sent to workers")
        key = self._sign("key:" + hashlib.sha256(data).hexdigest())[:32]
        if self.backend == "s3":
            self.s3.put(key, data, sniff_type(data))
            return key
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / key
        if not path.exists():
            temp = path.with_suffix(".tmp")
            temp.write_bytes(data)
            temp.replace(path)
        return key

    def read(self, key: str) -> bytes:
        """The kept bytes of ``key`` (local backend); NotFound if absent."""
        if not (len(key) == 32 and all(c in "0123456789abcdef" for c in key)):
            raise NotFound("no such image")
        path = self.root / key
        if not path.exists():
            raise NotFound("no such image")
        return path.read_bytes()

    def url(self, key: str, ttl: int) -> str:
        """A URL for ``key`` that works for ``ttl`` seconds."""
        if self.backend == "s3":
            return str(self.s3.url(key, ttl))
        expires = int(self.clock()) + int(ttl)
        return f"{self.public_url}/crowd/media/{key}?expires={expires}&sig={self._sign(f'{key}:{expires}')}"

    def check(self, key: str, expires: str | None, sig: str | None) -> None:
        """Raise NotFound unless (expires, sig) is a valid, unexpired signature of ``key``.

        Expired and forged URLs answer the same 404, so a URL reveals nothing.
        """
        try:
            deadline = int(expires or "")
        except ValueError:
            raise NotFound("no such image") from None
        if deadline < self.clock() or not hmac.compare_digest(self._sign(f"{key}:{deadline}"), sig or ""):
            raise NotFound("no such image")

    def open(self, key: str, expires: str | None, sig: str | None) -> tuple[bytes, str]:
        """Check a URL's signature and return (bytes, MIME type)."""
        self.check(key, expires, sig)
        data = self.read(key)
        return data, sniff_type(data)


def transformed_copy(data: bytes, seed: int = 0) -> bytes:
    """A visibly edited copy of an image (crop, resize, brightness, JPEG): a "same" gold.

    Pillow is a match dependency already (it decodes every image).
    """
    from PIL import Image, ImageEnhance

    with Image.open(io.BytesIO(data)) as image:
        picture = image.convert("RGB")
    width, height = picture.size
    margin_x, margin_y = width // (12 + seed % 5), height // (12 + seed % 7)
    picture = picture.crop((margin_x, margin_y, width - margin_x, height - margin_y))
    picture = picture.resize((max(1, int(picture.width * 0.8)), max(1, int(picture.height * 0.8))))
    picture = ImageEnhance.Brightness(picture).enhance(1.15 if seed % 2 else 0.88)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=80)
    return out.getvalue()
