"""Run ``match serve`` (gunicorn) on a free loopback port: the one launcher of the real
server, for the bench scripts (fuzz, load, http_load, ingest) and the tests
(tests/servers.py wraps it with request helpers and a clean-exit check).

>>> with serve("local", workers=4) as server:        # doctest: +SKIP
...     requests.get(server.url + "/count").json()

:func:`run` starts it with exactly the settings given; :func:`serve` first makes a
fresh store for it (a temporary MATCH_DATA_DIR, or a new Elasticsearch index).
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Server", "run", "serve", "free_port", "drop_index", "worker_pids"]


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
    """Delete an Elasticsearch index and the template match keeps for it (missing ones
    are fine; any other refusal raises)."""
    from match.store.elasticsearch import template_name

    for path in (index, f"_index_template/{template_name(index)}"):
        request = urllib.request.Request(f"{url.rstrip('/')}/{path}", method="DELETE")
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


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
def run(settings: Mapping[str, str], *, directory: Path, workers: int = 4, timeout: int = 60,
        cwd: Path | None = None) -> Iterator[Server]:
    """``match serve`` with ``settings`` as its only MATCH_* environment (inherited
    MATCH_*, PROMETHEUS_* and ELASTICSEARCH_URL are dropped), logging to
    ``directory/server-<port>.log``; up once ``/ping`` answers and ``workers`` workers
    run. On exit: SIGTERM (graceful), SIGKILL after 40 s; ``process.returncode`` says
    how it ended."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MATCH_", "PROMETHEUS_")) and key != "ELASTICSEARCH_URL"}
    env.update({"PYTHONPATH": str(ROOT), **settings})
    port = free_port()
    log = directory / f"server-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "match", "serve", "--workers", str(workers), "--host", "127.0.0.1",
             "--port", str(port), "--timeout", str(timeout)],
            env=env, cwd=cwd or directory, stdout=output, stderr=subprocess.STDOUT)
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


@contextlib.contextmanager
def serve(store: str = "local", *, workers: int = 4, es_url: str | None = None, timeout: int = 60,
          directory: Path | None = None, **settings: str) -> Iterator[Server]:
    """:func:`run` on a fresh store (a temp MATCH_DATA_DIR or a new index, dropped on
    exit). ``settings`` are extra MATCH_* values."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="match-serve-")))
        env = {"MATCH_STORE": store, "MATCH_DATA_DIR": str(directory / "data"), "MATCH_LOG_LEVEL": "warning"}
        index = f"match-serve-{uuid.uuid4().hex[:12]}"
        if store == "elasticsearch":
            env.update({"ELASTICSEARCH_URL": es_url or "http://127.0.0.1:9200", "MATCH_INDEX": index})
        env.update(settings)
        try:
            with run(env, directory=directory, workers=workers, timeout=timeout) as server:
                yield server
        finally:
            if store == "elasticsearch":
                drop_index(env["ELASTICSEARCH_URL"], index)
