"""Kill ``match crowd sync`` (SIGKILL, a real subprocess) mid-batch, rerun: nothing is paid twice.

The crowd server runs in this process on loopback; the syncs run as
``python -m match crowd sync`` subprocesses sharing the data directory, and are killed
at different moments of their batch (approvals, bonuses, extensions, deletions). The
run then finishes, and the endpoint's own records are checked: one HIT per HIT we
meant to make, at most one bonus per assignment, every HIT deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from match.crowd.workers import SimulationSettings
from tests.crowd.harness import DUMMY_ENV, CrowdHarness

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CrowdHarness]:
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    h = CrowdHarness(
        tmp_path,
        settings={"MATCH_CROWD_BUDGET": "100.00"},
        simulation=SimulationSettings(workers=12, accuracy=0.75, spammers=0.2, latency=0, seed=9),
    )
    for i in range(6):
        h.service.add_gold(
            f"http://images.test/gold/{i}a.jpg",
            f"http://images.test/gold/{i}b.jpg",
            "edited" if i % 2 else "different",
        )
    yield h
    h.close()


def _env(h: CrowdHarness) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in h.config.items():
        if name.startswith("MATCH_CROWD_") or name == "MATCH_DATA_DIR":
            env[name] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.slow
def test_sigkill_mid_sync_then_rerun_pays_once(harness: CrowdHarness) -> None:
    for i in range(30):
        url1, url2 = f"http://images.test/q/{i}.jpg", f"http://images.test/m/{i}.jpg"
        harness.label(url1, url2, "same" if i % 3 else "different")
        harness.service.put_task(
            "image-similarity", f"k{i}", {"input": {"image1": {"url": url1}, "image2": {"url": url2}}}
        )
    kills = 0
    for delay in (0.7, 1.0, 1.3):
        harness.work()
        process = subprocess.Popen(
            [sys.executable, "-m", "match", "crowd", "sync"],
            env=_env(harness),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1, "every sync finished before it could be killed: raise the task count"

    fresh = type(harness.service)(harness.config, clock=harness.clock)  # a new process, same state
    harness.service.close()
    harness.service = fresh
    harness.run()

    turk = fresh.turk
    hit_rows = fresh.state.hits()
    assert all(h["state"] == "deleted" for h in hit_rows)
    assert list(turk.list_hits()) == []  # every HIT made was found and deleted: no orphan, no duplicate
    payments = Counter(
        p["AssignmentId"] for a in fresh.state.assignments() for p in turk.bonus_payments(a["assignment_id"])
    )
    assert payments and max(payments.values()) == 1
    assert len(payments) == len(fresh.state.bonuses(state="paid"))
    for i in range(30):
        assert fresh.get_task("image-similarity", f"k{i}", sync=False)["state"] == "completed"
