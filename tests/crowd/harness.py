"""Test harness for the requester side: match's crowd server on loopback, boto3 against it.

``CrowdHarness`` starts :func:`match.crowd.server.create_crowd_app` in-process on a free
loopback port (werkzeug, threaded), builds a :class:`~match.crowd.service.CrowdService`
whose boto3 client points at it, and drives the server's simulated workers by hand
(``work()``: rounds until idle), so a test is deterministic and needs no network.

The oracle the simulated workers consult knows the truth of every real pair by its
form id (``pair_id("p", url1, url2)``) and of every gold pair by its gold id.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from match import config as match_config
from match.crowd import tasks as T
from match.crowd.server import create_crowd_app, crowd_store
from match.crowd.service import CrowdService
from match.crowd.workers import SimulatedCrowd, SimulationSettings

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDMATCHTEST",
    "AWS_SECRET_ACCESS_KEY": "not-a-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class QuietHandler(WSGIRequestHandler):
    """No request log, and keep-alive: thousands of loopback calls, one connection each
    would spend most of the suite's time connecting."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # werkzeug writes a response's head and body separately; without TCP_NODELAY,
        # Nagle holds the body until the client's delayed ACK: milliseconds per call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class Clock:
    """A settable clock shared by the crowd server and the service."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CrowdHarness:
    """A crowd server + simulated crowd + the service under test."""

    def __init__(
        self,
        root: Path,
        *,
        settings: Mapping[str, Any] | None = None,
        simulation: SimulationSettings | None = None,
        balance: str = "10000.00",
        clock: Clock | None = None,
    ) -> None:
        self.root = root
        self.clock = clock or Clock()
        self.app = create_crowd_app(root / "server", initial_balance=balance, clock=self.clock)
        self.store = crowd_store(self.app)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.truth: dict[str, str] = {}
        overrides = {
            "MATCH_DATA_DIR": str(root / "match"),
            "MATCH_CROWD_ENDPOINT": self.url,
            "MATCH_CROWD_PUBLIC_URL": "http://match.test",
            "MATCH_CROWD_SECRET": "test-secret",
        }
        overrides.update(settings or {})
        self.config = match_config.load(overrides, environ={})
        self.service = CrowdService(self.config, clock=self.clock)
        self.crowd = SimulatedCrowd(
            self.store,
            simulation or SimulationSettings(workers=10, accuracy=1.0, latency=0, seed=1),
            oracle=self.oracle,
        )

    def oracle(self, pair_key: str, html: str) -> str | None:
        """The truth of a pair: labelled real pairs, then the service's gold set."""
        if pair_key in self.truth:
            return self.truth[pair_key]
        for gold in self.service.state.gold():
            if gold["gold_id"] == pair_key:
                return str(gold["label"])
        return None

    def label(self, url1: str, url2: str, label: str) -> None:
        """Tell the oracle the truth of a real pair."""
        self.truth[T.pair_id("p", url1, url2)] = label

    def work(self) -> int:
        """Let the simulated workers take and submit everything they can."""
        return self.crowd.run_until_idle()

    def run(self, rounds: int = 60) -> None:
        """Alternate workers and syncs until nothing is processing and no HIT is open."""
        for _ in range(rounds):
            self.work()
            self.service.sync()
            if not self.service.state.tasks(state="processing", limit=1) and not self.service.state.hits(
                states=["open", "expiring", "intent"]
            ):
                return
        raise AssertionError("the loop did not settle")

    def turk_call(self, operation: str, **params: Any) -> dict[str, Any]:
        """A raw call through the service's boto3 client."""
        return self.service.turk.call(operation, **params)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.service.close()
        self.store.close()
