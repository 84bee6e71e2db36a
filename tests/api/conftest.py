"""Fixtures for the HTTP API tests: an app per backend, real photos and their copies,
and a loopback "remote" server that misbehaves on purpose (slow, redirecting, huge).

``app`` is built by :func:`match.app.create_app` from :func:`tests.conftest.store_settings`
(a fresh SQLite directory or Elasticsearch index per test) with loopback fetching
allowed (``MATCH_FETCH_ALLOW_NETWORKS=127.0.0.0/8``) and short fetch timeouts.
"""

from __future__ import annotations

import http.server
import io
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image, ImageOps
from werkzeug.test import TestResponse

from bench.serving import drop_index
from match.app import close_store, create_app
from tests.conftest import store_settings

#: Bodies over this many bytes are refused in the API tests (413).
UPLOAD_LIMIT = 3_000_000
#: Seconds the fetcher waits in the API tests (the whole fetch may take twice that).
FETCH_TIMEOUT = 1.0


# --- images ---------------------------------------------------------------------------


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` as JPEG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def resized_copy(data: bytes, scale: float = 0.6, quality: int = 70) -> bytes:
    """A smaller, re-compressed copy: what a re-posted photo usually is."""
    with Image.open(io.BytesIO(data)) as image:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return jpeg(image.resize(size, Image.Resampling.LANCZOS), quality)


def rotated_copy(data: bytes) -> bytes:
    """The photo turned 90 degrees."""
    with Image.open(io.BytesIO(data)) as image:
        return jpeg(image.transpose(Image.Transpose.ROTATE_90))


def mirrored_copy(data: bytes) -> bytes:
    """The photo flipped left to right."""
    with Image.open(io.BytesIO(data)) as image:
        return jpeg(ImageOps.mirror(image))


@pytest.fixture(scope="session")
def photos(photo_paths: list[Path]) -> list[bytes]:
    """12 real photos (JPEG bytes), spread over the corpus."""
    step = max(1, len(photo_paths) // 12)
    return [path.read_bytes() for path in photo_paths[::step][:12]]


# --- the app --------------------------------------------------------------------------


def api_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                 **extra: Any) -> dict[str, Any]:
    """Settings of a fresh store of ``backend``, loopback fetching allowed."""
    values: dict[str, Any] = {
        "MATCH_FETCH_ALLOW_NETWORKS": ["127.0.0.0/8"],
        "MATCH_FETCH_TIMEOUT": FETCH_TIMEOUT,
        "MATCH_MAX_UPLOAD_BYTES": UPLOAD_LIMIT,
        "MATCH_LOG_LEVEL": "error",
        "TESTING": True,
    }
    if backend == "elasticsearch":
        # Refresh at once instead of waiting for the next refresh (~1 s per add): same
        # visibility, much faster tests. test_e2e.py runs the default (wait_for).
        values["MATCH_ES_REFRESH"] = "true"
    values.update(extra)
    return store_settings(backend, tmp_path, request, **values)


@pytest.fixture
def app(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Flask]:
    """The match app over a fresh store of the parametrized backend."""
    settings = api_settings(backend, tmp_path, request)
    application = create_app(settings)
    yield application
    close_store(application)
    if settings["MATCH_STORE"] == "elasticsearch":
        drop_index(settings["ELASTICSEARCH_URL"], settings["MATCH_INDEX"])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --- requests -------------------------------------------------------------------------


def upload(data: bytes, name: str = "photo.jpg") -> tuple[str, bytes, str]:
    """A file field for :func:`multipart`: (filename, bytes, content type)."""
    return name, data, "image/jpeg"


def multipart(client: FlaskClient, path: str, fields: dict[str, Any], method: str = "POST") -> TestResponse:
    """Send ``fields`` as multipart/form-data, as ``curl -F`` does.

    The body is encoded here (urllib3) rather than by werkzeug's test client, whose
    spooled temp file for bodies over 500 KB is never closed (a ResourceWarning).
    """
    body, content_type = urllib3.encode_multipart_formdata(fields)
    return client.open(path, method=method, data=body, content_type=content_type)


def add(client: FlaskClient, filepath: str, data: bytes, **fields: Any) -> Any:
    """POST /add with an uploaded file; returns the JSON envelope (asserting 200)."""
    response = multipart(client, "/add", {"filepath": filepath, "image": upload(data), **fields})
    assert response.status_code == 200, response.json
    return response.json


def search(client: FlaskClient, data: bytes, **fields: Any) -> list[dict[str, Any]]:
    """POST /search with an uploaded file; returns ``result`` (asserting 200)."""
    response = multipart(client, "/search", {"image": upload(data), **fields})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ok"
    return list(response.json["result"])


def count(client: FlaskClient) -> int:
    response = client.get("/count")
    assert response.status_code == 200, response.json
    return int(response.json["result"][0])


# --- a misbehaving remote server ------------------------------------------------------


class Remote:
    """A loopback HTTP server with routes that test the fetcher's guards.

    ``/file/<name>`` serves bytes put with :meth:`put`; ``/host`` echoes the Host
    header; ``/status/<code>``;
    ``/redirect/<n>?to=<url>`` redirects n times then to ``to``; ``/slow`` waits
    before answering; ``/drip`` sends a byte every 0.2 s; ``/endless`` streams without
    a length; ``/declared-huge`` declares a huge Content-Length.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        remote = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                remote.handle(self)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def put(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return self.url(f"file/{name}")

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        segments = parts.path.strip("/").split("/")
        query = parse_qs(parts.query)
        try:
            if segments[0] == "file" and segments[-1] in self.files:
                self._send(handler, 200, self.files[segments[-1]])
            elif segments[0] == "host":
                self._send(handler, 200, str(handler.headers.get("Host")).encode())
            elif segments[0] == "status":
                self._send(handler, int(segments[1]), b"nope")
            elif segments[0] == "redirect":
                hops = int(segments[1])
                target = query["to"][0] if hops == 0 else self.url(f"redirect/{hops - 1}?{parts.query}")
                handler.send_response(302)
                handler.send_header("Location", target)
                handler.end_headers()
            elif segments[0] == "slow":
                time.sleep(FETCH_TIMEOUT * 4)
                self._send(handler, 200, b"late")
            elif segments[0] == "drip":
                handler.send_response(200)
                handler.end_headers()
                for _ in range(100):
                    handler.wfile.write(b"x")
                    handler.wfile.flush()
                    time.sleep(0.2)
            elif segments[0] == "endless":
                handler.send_response(200)
                handler.send_header("Content-Type", "image/jpeg")
                handler.end_headers()
                chunk = b"\xff" * 65536
                for _ in range(UPLOAD_LIMIT // len(chunk) + 10):
                    handler.wfile.write(chunk)
            elif segments[0] == "declared-huge":
                handler.send_response(200)
                handler.send_header("Content-Length", str(UPLOAD_LIMIT * 10))
                handler.end_headers()
                handler.wfile.write(b"\xff" * 1000)
            else:
                self._send(handler, 404, b"unknown")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up on purpose

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def remote() -> Iterator[Remote]:
    server = Remote()
    yield server
    server.close()
