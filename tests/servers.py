"""Running the real server in tests: ``match serve`` (gunicorn) as a subprocess.

Launching, waiting and stopping is bench/serving.py's :func:`~bench.serving.run` (one
launcher for benches and tests); this adds what tests want on top: request helpers that
assert, and a check that the server exited cleanly after SIGTERM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from bench import serving


class Server(serving.Server):
    """A running ``match serve`` with request helpers."""

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        # No session: every request is a new connection, so gunicorn spreads them over workers.
        return requests.post(self.url + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)

    def count(self) -> int:
        response = self.get("/count")
        assert response.status_code == 200, response.text
        return int(response.json()["result"][0])

    def search(self, data: bytes, **fields: Any) -> list[dict[str, Any]]:
        response = self.post("/search", files={"image": ("q.jpg", data)}, data=fields)
        assert response.status_code == 200, response.text
        return list(response.json()["result"])


@contextlib.contextmanager
def serve(directory: Path, settings: Mapping[str, str], *, workers: int = 2,
          cwd: Path | None = None) -> Iterator[Server]:
    """``match serve`` on a free loopback port with ``settings`` as its only MATCH_* env.

    Stops it with SIGTERM (graceful) and fails if it did not exit cleanly.
    """
    with serving.run(settings, directory=directory, workers=workers, cwd=cwd) as running:
        yield Server(running.url, running.process, running.log, running.env)
    assert running.process.returncode == 0, running.log_text()[-3000:]
