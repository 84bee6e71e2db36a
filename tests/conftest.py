"""Fixtures shared by every suite.

* ``photo_paths`` — real photographs extracted from Debian packages (tests/photos.py).
* ``image_server`` — a loopback HTTP server over a temp directory, so ``url`` requests
  never leave the machine (HMA's tests/utils.py does the same).
* ``es_url`` — the Elasticsearch that scripts/elasticsearch.sh started. A test that
  needs it *fails* when it is missing: CI always starts it, so a skip would hide a gap.
* ``make_store`` / ``store`` — a fresh store of each backend (``local`` and
  ``elasticsearch``), parametrized, for the contract suites.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socketserver
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.serving import drop_index
from match import config as match_config
from match.store import SignatureStore, open_store

BACKENDS = ("local", "elasticsearch")


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    """50+ real photographs (built once per machine, cached)."""
    from tests.photos import photos

    paths = photos()
    assert len(paths) >= 50, f"the photo corpus has only {len(paths)} photos"
    return paths


class ImageServer:
    """A threaded loopback HTTP server over ``root``; ``url(name)`` gives a file's URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def put(self, name: str, data: bytes) -> str:
        """Serve ``data`` at ``/name``; returns its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    server = ImageServer(tmp_path_factory.mktemp("served"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def es_url() -> str:
    """URL of the test Elasticsearch; fails (never skips) when it does not answer."""
    import urllib.request

    url = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").split(",")[0].rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health?timeout=10s", timeout=15) as response:
            assert response.status == 200
    except OSError as exc:
        pytest.fail(f"Elasticsearch is not answering at {url} ({exc}); start it with "
                    "`scripts/elasticsearch.sh start`")
    return url


def store_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                   **extra: Any) -> dict[str, Any]:
    """Settings for a fresh, isolated store of ``backend`` (unique index or data dir)."""
    overrides: dict[str, Any] = {"MATCH_STORE": backend, "MATCH_DATA_DIR": str(tmp_path / "data")}
    if backend == "elasticsearch":
        overrides["ELASTICSEARCH_URL"] = request.getfixturevalue("es_url")
        overrides["MATCH_INDEX"] = f"match-test-{uuid.uuid4().hex[:12]}"
    overrides.update(extra)
    return match_config.load(overrides, environ={})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[Callable[..., SignatureStore]]:
    """Factory of fresh stores of the parametrized backend; cleaned up after the test."""
    opened: list[tuple[SignatureStore, dict[str, Any]]] = []

    def make(**extra: Any) -> SignatureStore:
        settings = store_settings(backend, tmp_path, request, **extra)
        store = open_store(settings)
        opened.append((store, settings))
        return store

    yield make
    for store, settings in opened:
        if settings["MATCH_STORE"] == "elasticsearch":
            drop_index(settings["ELASTICSEARCH_URL"], settings["MATCH_INDEX"])
        store.close()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.fixture
def store(make_store: Callable[..., SignatureStore]) -> SignatureStore:
    return make_store()
