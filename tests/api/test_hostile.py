"""Hostile files, generated here (no committed binaries), through /add and /search on
both stores: each gets a 4xx or a correct answer, and a failed add leaves the store as
it was (count and listing unchanged).

"Correct answer" for the files that are real images (CMYK JPEG, 16-bit TIFF, a GIF of
10,000 frames, a bogus EXIF orientation, a JPEG with a ZIP appended...): the add is
acknowledged and searching the same bytes finds it at score 100.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from match.app import close_store, create_app
from tests.api.conftest import count, multipart, upload


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a tiny deflate bomb as data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # 10 MB of zeros compress to ~10 KB: the start of what a decoder would inflate.
    data = zlib.compress(b"\x00" * 10_000_000, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def gif_frames(frames: int) -> bytes:
    """An animated GIF: a first frame with structure (a flat image has no signature to
    find), then ``frames - 1`` tiny flat frames."""
    first = Image.effect_mandelbrot((160, 120), (-2.0, -1.2, 1.0, 1.2), 60).convert("P")
    rest = [Image.new("P", (160, 120), i % 200) for i in range(1, frames)]
    return encoded(first, "GIF", save_all=True, append_images=rest, duration=10, loop=0)


def tiff16() -> Image.Image:
    """A 16-bit greyscale image with structure (values kept under 256, where Pillow's
    conversion to RGB, as image-match's, does not clip them all to white)."""
    grey = np.asarray(Image.effect_mandelbrot((160, 120), (-2.0, -1.2, 1.0, 1.2), 60), dtype=np.uint16)
    image = Image.fromarray(grey)  # uint16: Pillow's I;16
    assert image.mode == "I;16"
    return image


def bogus_orientation(photo: bytes, value: int) -> bytes:
    with Image.open(io.BytesIO(photo)) as image:
        exif = Image.Exif()
        exif[0x0112] = value
        return encoded(image.convert("RGB"), "JPEG", exif=exif.tobytes(), quality=85)


def corrupt_scan(photo: bytes) -> bytes:
    """Garbage over the middle of the entropy-coded data (headers intact)."""
    data = bytearray(photo)
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes((i * 37) % 251 for i in range(2000))
    return bytes(data)


#: (name, builder(photo) -> bytes, allowed statuses). 200 means it must then be found.
HOSTILE: list[tuple[str, Callable[[bytes], bytes], set[int]]] = [
    ("empty.jpg", lambda p: b"", {400}),
    ("truncated.jpg", lambda p: p[: len(p) // 3], {422}),
    ("header-only.jpg", lambda p: p[:200], {422}),
    ("corrupt-scan.jpg", corrupt_scan, {200, 422}),
    ("magic-only.jpg", lambda p: b"\xff\xd8\xff", {422}),
    ("png-bomb.png", lambda p: png_bomb(100_000, 100_000), {413}),
    ("png-long-side.png", lambda p: png_bomb(1, 40_000_000), {413}),
    ("png-side-over-max.png", lambda p: png_bomb(40_000, 10), {413}),
    ("tiff-bomb.tif", lambda p: encoded(Image.new("L", (10, 10)), "TIFF").replace(
        struct.pack("<HHII", 256, 4, 1, 10), struct.pack("<HHII", 256, 4, 1, 10_000_000)), {413, 422}),
    ("svg.svg", lambda p: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
                          b'height="10"><rect width="10" height="10"/></svg>', {415}),
    ("xxe.jpg", lambda p: b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                          b"<x>&e;</x>", {415}),
    ("text.jpg", lambda p: b"this is not an image, whatever the name says\n" * 20, {415}),
    ("html.jpg", lambda p: b"<html><script>alert(1)</script></html>", {415}),
    ("pdf.jpg", lambda p: b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n", {415}),
    ("eps.jpg", lambda p: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", {415}),
    ("psd.jpg", lambda p: encoded(Image.new("RGB", (8, 8)), "PNG").replace(b"\x89PNG", b"8BPS"), {415}),
    ("gif-10k-frames.gif", lambda p: gif_frames(10_000), {200}),
    ("tiff-16bit.tif", lambda p: encoded(tiff16(), "TIFF"), {200}),
    ("cmyk.jpg", lambda p: encoded(Image.open(io.BytesIO(p)).convert("CMYK"), "JPEG", quality=90), {200}),
    ("orientation-9.jpg", lambda p: bogus_orientation(p, 9), {200}),
    ("orientation-0.jpg", lambda p: bogus_orientation(p, 0), {200}),
    ("orientation-65535.jpg", lambda p: bogus_orientation(p, 65535), {200}),
    ("polyglot-jpeg-zip.jpg", lambda p: p + b"PK\x03\x04" + b"\x00" * 26 + b"evil.js" + b"alert(1)", {200}),
    ("polyglot-jpeg-html.jpg", lambda p: b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>", {422}),
    ("polyglot-gif-js.gif", lambda p: b"GIF89a/*" + b"\x00" * 8 + b"*/=1;alert(1);", {422}),
    ("png-as-jpg.jpg", lambda p: encoded(Image.open(io.BytesIO(p)), "PNG"), {200}),
    ("one-pixel.png", lambda p: encoded(Image.new("RGB", (1, 1)), "PNG"), {200}),
]


#: Images without structure: stored, but their signature (all zeros) matches nothing.
FLAT = {"one-pixel.png"}


def test_hostile_files(client: FlaskClient, photos: list[bytes]) -> None:
    photo = photos[1]
    multipart(client, "/add", {"filepath": "existing.jpg", "image": upload(photos[0])})
    stored = 1
    for name, build, allowed in HOSTILE:
        data = build(photo)
        before = client.get("/list?limit=1000").json["result"]
        response = multipart(client, "/add", {"filepath": f"hostile/{name}", "image": upload(data, name)})
        status = response.status_code
        assert status in allowed, (name, status, response.json)
        assert response.mimetype == "application/json" and response.json["status"] == ("ok" if status == 200
                                                                                       else "fail"), name
        if status == 200:
            stored += 1
            if name in FLAT:
                continue
            hits = multipart(client, "/search", {"image": upload(data, name), "all_orientations": "false"})
            assert hits.status_code == 200, (name, hits.json)
            found = [hit for hit in hits.json["result"] if hit["filepath"] == f"hostile/{name}"]
            assert found and found[0]["score"] > 99.9, (name, hits.json["result"][:3])
        else:
            assert count(client) == stored, f"{name}: a failed add changed the count"
            assert client.get("/list?limit=1000").json["result"] == before, f"{name}: the listing changed"
            searched = multipart(client, "/search", {"image": upload(data, name)})
            assert 400 <= searched.status_code < 500, (name, searched.status_code)
    assert count(client) == stored


@pytest.mark.parametrize("setting", ["true", "false"])
def test_bogus_orientation_with_and_without_exif_transpose(tmp_path: Path, photos: list[bytes],
                                                           setting: str) -> None:
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path),
                      "MATCH_EXIF_TRANSPOSE": setting, "MATCH_LOG_LEVEL": "error"})
    try:
        client = app.test_client()
        for value in (0, 9, 255, 65535):
            response = multipart(client, "/add", {"filepath": f"o{value}",
                                                  "image": upload(bogus_orientation(photos[2], value))})
            assert response.status_code == 200, (value, response.json)
    finally:
        close_store(app)


def test_formats_outside_the_allow_list_are_415(tmp_path: Path) -> None:
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path), "MATCH_IMAGE_FORMATS": "JPEG",
                      "MATCH_LOG_LEVEL": "error"})
    try:
        client = app.test_client()
        png = encoded(Image.new("RGB", (32, 32), (200, 10, 10)), "PNG")
        jpeg = encoded(Image.new("RGB", (32, 32), (200, 10, 10)), "JPEG")
        assert multipart(client, "/add", {"filepath": "p", "image": upload(png)}).status_code == 415
        assert multipart(client, "/add", {"filepath": "j", "image": upload(jpeg)}).status_code == 200
        assert count(client) == 1
    finally:
        close_store(app)


def test_metadata_over_the_cap_is_400_and_stores_nothing(tmp_path: Path, photos: list[bytes]) -> None:
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path),
                      "MATCH_MAX_METADATA_BYTES": 100, "MATCH_LOG_LEVEL": "error"})
    try:
        client = app.test_client()
        big = '{"a": "' + "x" * 200 + '"}'
        response = multipart(client, "/add", {"filepath": "m", "image": upload(photos[0]), "metadata": big})
        assert response.status_code == 400 and "MATCH_MAX_METADATA_BYTES" in response.json["error"][0]
        response = client.post("/add", json={"filepath": "m", "metadata": {"a": "x" * 200},
                                             "url": "http://example.invalid/a.jpg"})
        assert response.status_code == 400 and "MATCH_MAX_METADATA_BYTES" in response.json["error"][0]
        ok = multipart(client, "/add", {"filepath": "m", "image": upload(photos[0]), "metadata": '{"a": 1}'})
        assert ok.status_code == 200
        assert count(client) == 1
    finally:
        close_store(app)


@pytest.mark.parametrize(("query", "status"), [
    ("offset=-1", 400), ("offset=1.5", 400), ("offset=abc", 400), ("offset=1e3", 400),
    ("offset=99999999999999999999999", 400), ("offset=1000000001", 400), ("offset=1000000000", 200),
    ("limit=0", 400), ("limit=-5", 400), ("limit=1001", 400), ("limit=%20", 400), ("limit=0x10", 400),
    ("limit=10", 200), ("offset=+3&limit=2", 200),
])
def test_offset_and_limit(client: FlaskClient, query: str, status: int) -> None:
    response = client.get(f"/list?{query}")
    assert response.status_code == status, response.json


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "", " ", "null", "[]", "True!"])
def test_booleans_are_strict(client: FlaskClient, photos: list[bytes], value: str) -> None:
    response = multipart(client, "/search", {"image": upload(photos[0]), "all_orientations": value})
    # An empty value is "absent" for integers only; for a boolean it is invalid.
    assert response.status_code == 400, (value, response.json)
