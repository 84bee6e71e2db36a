"""Running the real server in tests: ``match serve`` (gunicorn) as a subprocess.

Shared by the end-to-end, README and hardening tests so they start, wait for and stop
the server the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``match serve``: its base URL and log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

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


def wait_until_up(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"match serve exited: {server.log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(server.url + "/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"match serve did not answer /ping: {server.log.read_text(errors='replace')[-3000:]}")



@contextlib.contextmanager
def serve(directory: Path, settings: Mapping[str, str], *, workers: int = 2,
          cwd: Path | None = None) -> Iterator[Server]:
    """``match serve`` on a free loopback port with ``settings`` as its only MATCH_* env.

    Stops it with SIGTERM (graceful) and fails if it did not exit cleanly.
    """
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MATCH_") and key != "ELASTICSEARCH_URL"}
    env.update({"PYTHONPATH": str(ROOT), **settings})
    port = free_port()
    log = directory / f"server-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "match", "serve", "--workers", str(workers), "--host", "127.0.0.1",
             "--port", str(port), "--timeout", "60"],
            env=env, cwd=cwd or directory, stdout=output, stderr=subprocess.STDOUT)
    running = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_up(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text(errors="replace")[-3000:]
