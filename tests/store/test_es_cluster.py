"""Fault test: a 3-node Elasticsearch cluster loses a node while match adds and searches.

The cluster (``scripts/elasticsearch.sh start --nodes 3``: three nodes on loopback,
ports 9201-9203) is started by a session fixture and stopped at the end. The store gets
all three URLs and an index with one replica. While one thread adds records one by one
and another searches, the node holding the index's primary shard is stopped. Then:

* searches kept answering (the client retries on the other nodes; the replica is
  promoted to primary);
* no acknowledged add was lost: every filepath whose ``upsert`` returned is counted and
  readable at the end. Adds that raised ``StoreUnavailable`` during the failover were
  not acknowledged, so the test only counts them.

Slow (the cluster starts in about a minute): ``pytest -m slow``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.serving import drop_index
from match import config as match_config
from match import signature as sig
from match.errors import StoreUnavailable
from match.store import Record, open_store

pytestmark = [pytest.mark.slow, pytest.mark.elasticsearch]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "elasticsearch.sh"
PORTS = (9201, 9202, 9203)
WRITERS = 8


def script(*args: str, timeout: float = 600) -> None:
    subprocess.run([str(SCRIPT), *args], check=True, timeout=timeout)


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="session")
def cluster() -> Iterator[list[str]]:
    """URLs of the 3-node cluster, started for this session and stopped afterwards
    (left running if it already was: someone else is using it)."""
    status = subprocess.run([str(SCRIPT), "status", "--nodes", "3"], capture_output=True, timeout=60)
    script("start", "--nodes", "3")
    try:
        yield [f"http://127.0.0.1:{port}" for port in PORTS]
    finally:
        if status.returncode != 0:
            script("stop", "--nodes", "3")


def wait_for(condition: Callable[[], bool], what: str, state: Callable[[], object],
             timeout: float = 120) -> None:
    """Poll ``condition`` until true; fail naming ``what`` and the ``state()`` seen after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s: {state()}"
        time.sleep(0.2)


def primary_node(url: str, index: str) -> int:
    """Number (1-3) of the node holding the index's primary shard."""
    shards = get_json(f"{url}/_cat/shards/{index}?format=json&h=prirep,node,state")
    assert isinstance(shards, list)
    (primary,) = [shard for shard in shards if shard["prirep"] == "p"]
    assert primary["state"] == "STARTED"
    return int(primary["node"].removeprefix("node-"))


def test_losing_a_node_loses_no_acknowledged_add(cluster: list[str], tmp_path: Path) -> None:
    index = f"match-cluster-{uuid.uuid4().hex[:8]}"
    store = open_store(match_config.load({
        "ELASTICSEARCH_URL": ",".join(cluster), "MATCH_INDEX": index, "MATCH_ES_REPLICAS": 1,
        "MATCH_ES_TIMEOUT": 5.0, "MATCH_DATA_DIR": str(tmp_path)}, environ={}))
    # Both copies assigned before the fault.
    health = get_json(f"{cluster[0]}/_cluster/health/{index}?wait_for_status=green&timeout=60s")
    assert isinstance(health, dict) and health["status"] == "green"
    victim = primary_node(cluster[0], index)

    rng = np.random.default_rng(11)
    signatures = rng.integers(-2, 3, (100_000, sig.SIGNATURE_LENGTH)).astype(np.int8)
    acknowledged: list[str] = []
    refused: list[str] = []
    searches = {"ok": 0, "ok_after_stop": 0, "failed": 0}
    unexpected: list[BaseException] = []
    stopped = threading.Event()
    done = threading.Event()

    def add(writer: int) -> None:
        # Each add waits for a refresh (wait_for, ~1 s): several writers keep it busy.
        i = writer
        while not done.is_set():
            filepath = f"acked/{i:06d}.jpg"
            try:
                store.upsert(Record(filepath, signatures[i]))
                acknowledged.append(filepath)
            except StoreUnavailable:
                refused.append(filepath)
            except BaseException as exc:  # noqa: BLE001 - asserted empty below
                unexpected.append(exc)
                return
            i += WRITERS

    def search() -> None:
        while not done.is_set():
            if not acknowledged:
                time.sleep(0.05)
                continue
            last = int(acknowledged[-1][6:12])
            try:
                matches = store.search(signatures[last], size=1)
                assert matches and matches[0].filepath == f"acked/{last:06d}.jpg"
                searches["ok"] += 1
                if stopped.is_set():
                    searches["ok_after_stop"] += 1
            except StoreUnavailable:
                searches["failed"] += 1
            except BaseException as exc:  # noqa: BLE001 - asserted empty below
                unexpected.append(exc)
                return

    threads = [threading.Thread(target=add, args=(writer,)) for writer in range(WRITERS)]
    threads.append(threading.Thread(target=search))
    for thread in threads:
        thread.start()
    try:
        def state() -> str:
            return (f"{len(acknowledged)} acknowledged, {len(refused)} refused, searches {searches}, "
                    f"unexpected {unexpected!r}")

        wait_for(lambda: len(acknowledged) >= 20 or bool(unexpected), "20 adds before the fault", state)
        before = len(acknowledged)
        script("node-stop", str(victim))
        stopped.set()
        wait_for(lambda: (len(acknowledged) >= before + 50 and searches["ok_after_stop"] >= 20)
                 or bool(unexpected), "50 adds and 20 searches after the fault", state)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
        if stopped.is_set():
            restart = threading.Thread(target=script, args=("node-start", str(victim)))
            restart.start()
    survivors = [url for url, port in zip(cluster, PORTS, strict=True) if port != PORTS[victim - 1]]
    print(f"stopped node-{victim} after {before} adds; {len(acknowledged)} acknowledged, "
          f"{len(refused)} refused; searches {searches}")

    try:
        assert unexpected == []
        assert searches["failed"] <= 2, searches
        # Nothing acknowledged is lost: count and read every one (refused adds may or may
        # not have been written, so they only bound the count from above).
        assert len(acknowledged) <= store.count() <= len(acknowledged) + len(refused)
        missing = [filepath for filepath in acknowledged if store.get(filepath) is None]
        assert missing == []
        assert primary_node(survivors[0], index) != victim
    finally:
        store.close()
        restart.join()
        drop_index(survivors[0], index)  # and its template
