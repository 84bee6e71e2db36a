"""The hardened server, running: ``match serve`` (gunicorn) on loopback, driven over HTTP.

* a schemathesis fuzz of a few hundred requests against /openapi.json (bench/fuzz.py
  runs the 5,000+ version): no 5xx, no response outside the spec;
* metrics summed over workers (prometheus_client multiprocess mode), the directory
  removed at exit;
* a worker SIGKILLed under load: only the request it was serving can fail (a reset
  connection, never a 5xx), the master starts a new worker, nothing acknowledged is lost;
* SIGTERM drains: requests in flight complete, then the server exits 0;
* the store failing mid-run (real faults: the SQLite write lock held by another
  process; the Elasticsearch index closed): 503 with Retry-After, nothing half-written,
  and the service recovers when the fault goes away;
* 32 clients of mixed add/search/delete for 10 s on both stores (bench/load.py runs
  60 s): zero errors and no lost adds.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import socketserver
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.fuzz import fuzz
from bench.load import images, listed, run_load
from bench.serving import Server, serve, worker_pids


def test_fuzz_against_the_spec_finds_nothing() -> None:
    with serve("local", workers=2) as server:
        figures = fuzz(server.url, examples=25)
        log = server.log_text()
    assert figures.requests >= 250, figures.as_dict()
    assert figures.server_errors == 0, figures.as_dict()
    assert figures.violations == 0, figures.as_dict()
    assert "Traceback" not in log, log[-3000:]


def _metric(text: str, route: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("match_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_summed_over_workers_and_cleaned_up() -> None:
    with serve("local", workers=4) as server:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: requests.get(server.url + "/ping", timeout=30).status_code,
                                     range(60)))
        assert statuses == [200] * 60
        text = requests.get(server.url + "/metrics", timeout=30).text
        # Every worker answered some of the 60 (plus the startup probes): all are counted.
        assert _metric(text, "/ping") >= 60, text[:2000]
        _protocol_errors_are_json(server)
        directory = _multiproc_dir_of(server)
        files = list(Path(directory).glob("*.db"))
        assert len({re.sub(r"\D", "", f.name) for f in files}) >= 2, files  # per-process files
    assert not Path(directory).exists(), "the metrics directory outlived the server"


def _raw(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the status, headers and body of the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _protocol_errors_are_json(server: Server) -> None:
    """What gunicorn refuses before the app (match.worker) still gets the envelope."""
    cases = [
        (b"GET /count?" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /count HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
         + b"\r\n", 431),
        (b"GET /count HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"G\x00T /count HTTP/1.1\r\n\r\n", 400),
        (b"GET /count HTTP/9.9\r\nHost: a\r\n\r\n", 400),
    ]
    for request, status in cases:
        got, headers, body = _raw(server, request)
        assert got == status, (request[:60], got, body)
        assert headers["content-type"] == "application/json"
        envelope = json.loads(body)
        assert envelope["status"] == "fail" and envelope["result"] == [] and envelope["error"]


def _multiproc_dir_of(server: Server) -> str:
    """The PROMETHEUS_MULTIPROC_DIR `match serve` made: where its workers' mmap'ed files live."""
    for pid in worker_pids(server.process.pid):
        found = re.search(r"(/\S*match-metrics-[^/\s]+)/", Path(f"/proc/{pid}/maps").read_text())
        if found:
            return found.group(1)
    raise AssertionError("no worker maps a metrics file")


def test_a_worker_killed_under_load_only_loses_its_own_request() -> None:
    corpus = images(8)
    with serve("local", workers=4) as server:
        before = worker_pids(server.process.pid)
        assert len(before) == 4
        stop = time.monotonic() + 8.0
        outcomes: list[str] = []
        acknowledged: set[str] = set()
        lock = threading.Lock()

        def client(number: int) -> None:
            made = 0
            while time.monotonic() < stop:
                filepath = f"load/{number}/{made}"
                made += 1
                for _ in range(3):  # retried only when the connection broke
                    try:
                        response = requests.post(server.url + "/add", data={"filepath": filepath},
                                                 files={"image": ("a.jpg", corpus[made % len(corpus)])},
                                                 timeout=30)
                    except requests.ConnectionError:
                        with lock:
                            outcomes.append("connection")
                        continue
                    with lock:
                        outcomes.append(str(response.status_code))
                        if response.status_code == 200:
                            acknowledged.add(filepath)
                    break

        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(worker_pids(server.process.pid)) < 4:
            time.sleep(0.2)
        after = worker_pids(server.process.pid)
        assert len(after) == 4 and victim not in after, (before, after)
        failures = [outcome for outcome in outcomes if outcome != "200"]
        # Sync workers serve one request at a time: at most the victim's is cut off.
        assert all(outcome == "connection" for outcome in failures), failures
        assert len(failures) <= 1, failures
        assert len(outcomes) > 50
        assert listed(server.url) == acknowledged
        assert requests.get(server.url + "/count", timeout=30).json()["result"] == [len(acknowledged)]


class _SlowImages:
    """A loopback server that answers each GET after ``delay`` seconds with a JPEG."""

    def __init__(self, body: bytes, delay: float) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    remote = _SlowImages(images(1)[0], delay=2.0)
    try:
        with serve("local", workers=4, directory=tmp_path,
                   MATCH_FETCH_ALLOW_NETWORKS="127.0.0.0/8") as server:
            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(requests.post, server.url + "/add", timeout=30,
                                       data={"filepath": f"slow/{n}",
                                             "url": f"http://127.0.0.1:{remote.port}/{n}"})
                           for n in range(4)]
                time.sleep(0.7)  # all four are being fetched now
                server.process.send_signal(signal.SIGTERM)
                statuses = [future.result().status_code for future in futures]
            code = server.process.wait(timeout=40)
            # New connections are refused once the server is down.
            with pytest.raises(requests.ConnectionError):
                requests.get(server.url + "/ping", timeout=5)
    finally:
        remote.close()
    assert statuses == [200] * 4
    assert code == 0
    from match.store.local import DATABASE_NAME, LocalStore

    with LocalStore(tmp_path / "data" / DATABASE_NAME) as store:
        assert store.count() == 4


def _add(server: Server, filepath: str, data: bytes) -> requests.Response:
    return requests.post(server.url + "/add", data={"filepath": filepath},
                         files={"image": ("a.jpg", data)}, timeout=60)


def test_local_store_locked_mid_run_is_503_and_nothing_half_written(tmp_path: Path) -> None:
    corpus = images(3)
    with serve("local", workers=2, directory=tmp_path) as server:
        assert _add(server, "before.jpg", corpus[0]).status_code == 200
        # Another process takes SQLite's write lock and keeps it: a real fault.
        holder = sqlite3.connect(tmp_path / "data" / "match.sqlite3", timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            blocked = _add(server, "during.jpg", corpus[1])
            assert blocked.status_code == 503, blocked.text
            assert blocked.headers["Retry-After"] and blocked.json()["status"] == "fail"
            deleted = requests.delete(server.url + "/delete", params={"filepath": "before.jpg"}, timeout=60)
            assert deleted.status_code == 503, deleted.text
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert requests.get(server.url + "/count", timeout=30).json()["result"] == [1]
        assert listed(server.url, "") == {"before.jpg"}
        assert _add(server, "after.jpg", corpus[2]).status_code == 200
        assert listed(server.url, "") == {"before.jpg", "after.jpg"}
        metrics = requests.get(server.url + "/metrics", timeout=30).text
        assert 'match_store_errors_total{error="StoreUnavailable"}' in metrics


@pytest.mark.elasticsearch
def test_elasticsearch_index_closed_mid_run_is_503_and_recovers(es_url: str) -> None:
    corpus = images(3)
    with serve("elasticsearch", workers=2, es_url=es_url) as server:
        index = server.env["MATCH_INDEX"]
        assert _add(server, "before.jpg", corpus[0]).status_code == 200
        urllib.request.urlopen(urllib.request.Request(f"{es_url}/{index}/_close", method="POST"), timeout=30)
        try:
            for response in (_add(server, "during.jpg", corpus[1]),
                             requests.post(server.url + "/search", files={"image": ("q.jpg", corpus[0])},
                                           timeout=60),
                             requests.get(server.url + "/count", timeout=60)):
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"]
        finally:
            reopen = f"{es_url}/{index}/_open?wait_for_active_shards=1"
            urllib.request.urlopen(urllib.request.Request(reopen, method="POST"), timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = requests.get(server.url + "/count", timeout=60)
            if response.status_code == 200:
                break
            time.sleep(0.5)
        assert response.json()["result"] == [1]
        assert listed(server.url, "") == {"before.jpg"}
        assert _add(server, "after.jpg", corpus[2]).status_code == 200
        assert listed(server.url, "") == {"before.jpg", "after.jpg"}


@pytest.fixture(params=["local", pytest.param("elasticsearch", marks=pytest.mark.elasticsearch)])
def loaded_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    es_url = request.getfixturevalue("es_url") if request.param == "elasticsearch" else None
    with serve(request.param, workers=4, es_url=es_url) as server:
        yield server


@pytest.mark.slow
def test_32_clients_mixed_load_no_errors_no_lost_adds(loaded_server: Server) -> None:
    result = run_load(loaded_server, clients=32, seconds=10)
    figures = result.as_dict()
    assert result.errors == 0, figures
    # Elasticsearch acknowledges an add once it is searchable (MATCH_ES_REFRESH=wait_for,
    # up to 1 s): with 4 sync workers that bounds it near 4 adds/s, so fewer operations.
    assert result.adds >= 20 and result.searches >= 1 and result.deletes >= 1, figures
    assert result.lost == 0 and result.ghosts == 0, figures
    assert result.count == len(result.expected), figures
