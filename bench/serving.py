"""Run ``match serve`` (gunicorn) on a free loopback port, for the hardening scripts
(bench/fuzz.py, bench/load.py) and their CI versions in tests/test_hardening.py.

>>> with serve("local", workers=4) as server:        # doctest: +SKIP
...     requests.get(server.url + "/count").json()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Server", "serve", "free_port", "drop_index", "worker_pids"]


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``match serve``: base URL, process, log file, settings it runs with."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of ``master`` (its children, from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.append(int(entry.name))
    return sorted(pids)


def drop_index(url: str, index: str) -> None:
    """Delete an Elasticsearch index (missing is fine)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/{index}", method="DELETE")
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=30).close()


def _wait_until_up(server: Server, timeout: float, workers: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"match serve exited {server.process.returncode}:\n"
                               f"{server.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/ping", timeout=2) as response:
                if response.status == 200 and len(worker_pids(server.process.pid)) >= workers:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"match serve did not answer within {timeout} s:\n{server.log_text()[-3000:]}")


@contextlib.contextmanager
def serve(store: str = "local", *, workers: int = 4, es_url: str | None = None, timeout: int = 60,
          directory: Path | None = None, **settings: str) -> Iterator[Server]:
    """``match serve`` on a fresh store (a temp MATCH_DATA_DIR or a new index); stopped
    with SIGTERM (and the index dropped) on exit. ``settings`` are extra MATCH_* values."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="match-serve-")))
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MATCH_", "PROMETHEUS_"))}
        env.update({"PYTHONPATH": str(ROOT), "MATCH_STORE": store, "MATCH_DATA_DIR": str(directory / "data"),
                    "MATCH_LOG_LEVEL": "warning"})
        index = f"match-serve-{uuid.uuid4().hex[:12]}"
        if store == "elasticsearch":
            env.update({"ELASTICSEARCH_URL": es_url or "http://127.0.0.1:9200", "MATCH_INDEX": index})
        env.update(settings)
        port = free_port()
        log = directory / "server.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "match", "serve", "--workers", str(workers), "--host", "127.0.0.1",
                 "--port", str(port), "--timeout", str(timeout)],
                env=env, cwd=directory, stdout=output, stderr=subprocess.STDOUT)
        server = Server(f"http://127.0.0.1:{port}", process, log, env)
        try:
            _wait_until_up(server, 60, workers)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if store == "elasticsearch":
                drop_index(env["ELASTICSEARCH_URL"], index)
