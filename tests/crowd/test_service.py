"""The requester side against the crowd server on loopback: Tasks API, gold, money, crashes.

Every test drives boto3 (through :class:`match.crowd.mturk.Turk`) against
:func:`match.crowd.server.create_crowd_app` on a free loopback port, with simulated
workers moved by hand, and dummy AWS credentials from the environment.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from match.crowd import tasks as T
from match.crowd.api import bp
from match.crowd.workers import SimulationSettings
from match.errors import BudgetExceeded, Conflict, TurkRequestError
from tests.crowd.harness import CrowdHarness

FN = "image-similarity"



@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Factory of harnesses (crowd server + service), each with four gold pairs."""
    made: list[CrowdHarness] = []

    def build(**kwargs: Any) -> CrowdHarness:
        h = CrowdHarness(tmp_path / f"h{len(made)}", **kwargs)
        made.append(h)
        for i in range(4):
            h.service.add_gold(
                f"http://images.test/gold/{i}a.jpg",
                f"http://images.test/gold/{i}b.jpg",
                "edited" if i % 2 else "different",
            )
        return h

    yield build
    for h in made:
        h.close()


@pytest.fixture
def harness(make: Any) -> CrowdHarness:
    return make()  # type: ignore[no-any-return]


def body(i: int) -> dict[str, Any]:
    return {
        "input": {
            "image1": {"url": f"http://images.test/q/{i}.jpg"},
            "image2": {"url": f"http://images.test/m/{i}.jpg"},
        }
    }


def label(h: CrowdHarness, i: int, truth: str) -> None:
    h.label(f"http://images.test/q/{i}.jpg", f"http://images.test/m/{i}.jpg", truth)


@pytest.fixture
def client(harness: CrowdHarness) -> Any:
    app = Flask("match-test")
    app.config.update(harness.config)
    app.extensions["match.crowd"] = harness.service
    app.register_blueprint(bp)
    return app.test_client()


# --- the Tasks API -------------------------------------------------------------------


def test_tasks_api_lifecycle(harness: CrowdHarness, client: Any) -> None:
    label(harness, 1, "same")
    url = f"/crowd/functions/{FN}/tasks/pair-1"
    created = client.put(url, json=body(1))
    assert created.status_code == 200
    task = created.get_json()
    assert set(task) == {"taskName", "input", "problemDetails", "state", "result"}
    assert task["state"] == "processing" and task["result"] is None
    assert client.put(url, json=body(1)).status_code == 200  # same input: the same task
    assert client.put(url, json=body(2)).status_code == 409  # another input under a taken name
    assert client.delete(url).status_code == 409  # still processing

    harness.run()
    done = client.get(url).get_json()
    assert done["state"] == "completed"
    assert 0.0 <= done["result"]["similarityScore"] <= 1.0 and done["result"]["match"] is True

    listed = client.get(f"/crowd/functions/{FN}/tasks?state=completed").get_json()
    assert [t["taskName"] for t in listed["tasks"]] == ["pair-1"]
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    again = client.put(url, json=body(2))  # the name is free again
    assert again.status_code == 200 and again.get_json()["input"] == body(2)["input"]


def test_tasks_api_validation(client: Any) -> None:
    long_url = "http://images.test/" + "x" * 400
    bad = client.put(
        f"/crowd/functions/{FN}/tasks/a",
        json={"input": {"image1": {"url": long_url}, "image2": {"url": "http://x/1"}}},
    )
    assert bad.status_code == 400 and "400 characters" in bad.get_json()["error"]["message"]
    assert client.put(f"/crowd/functions/{FN}/tasks/a", json={"input": {}}).status_code == 400
    assert client.put(f"/crowd/functions/{FN}/tasks/bad%20name", json=body(1)).status_code == 400
    assert client.get("/crowd/functions/nope/tasks/a").status_code == 404
    assert client.get(f"/crowd/functions/{FN}/tasks?state=weird").status_code == 400


def test_test_function_completes_at_once_without_a_hit(harness: CrowdHarness, client: Any) -> None:
    url = "/crowd/functions/image-similarity-test/tasks/mock-1"
    task = client.put(url, json=body(1)).get_json()
    assert task["state"] == "completed" and 0 <= task["result"]["similarityScore"] <= 1
    assert client.get(url).get_json() == task
    assert list(harness.service.turk.list_hits()) == []
    assert client.delete(url).status_code == 204


def test_media_urls_are_signed_and_expire(harness: CrowdHarness, client: Any) -> None:
    media = harness.service.media
    key = media.keep(b"\xff\xd8\xff not really a jpeg")
    url = media.url(key, ttl=60).replace("http://match.test", "")
    assert client.get(url).data.startswith(b"\xff\xd8\xff")
    assert client.get(url.replace("sig=", "sig=0")).status_code == 404
    assert client.get(f"/crowd/media/{key}").status_code == 404
    harness.clock.advance(61)
    assert client.get(url).status_code == 404


# --- gold, blocking, expiry ---------------------------------------------------------


def test_gold_pays_right_answers_and_drops_wrong_ones(make: Any) -> None:
    harness = make(
        simulation=SimulationSettings(workers=6, accuracy=1.0, spammers=0.5, latency=0, seed=4),
        settings={"MATCH_CROWD_BLOCK_MIN_GOLD": 4},
    )
    for i in range(12):
        label(harness, i, "same" if i % 2 else "different")
        harness.service.put_task(FN, f"p{i}", body(i))
    harness.run()
    state = harness.service.state
    rows = state.assignments()
    right = [a for a in rows if a["gold_ok"]]
    wrong = [a for a in rows if not a["gold_ok"]]
    assert right and wrong
    paid = {b["assignment_id"] for b in state.bonuses(state="paid")}
    assert paid == {a["assignment_id"] for a in right}
    assert not any(a["counted"] for a in wrong)
    # Every bonus went out once, and MTurk agrees.
    remote = [p for a in rows for p in harness.service.turk.bonus_payments(a["assignment_id"])]
    assert len(remote) == len(paid)
    # Workers were told, in batches (NotifyWorkers), and perfect workers were never blocked.
    assert all(n["sent"] for n in state._all("SELECT * FROM notices"))
    honest = {w.worker_id for w in harness.crowd.workers if not w.spammer}
    blocked = {w["worker_id"] for w in state.workers() if w["blocked"]}
    assert not honest & blocked
    for i in range(12):
        task = harness.service.get_task(FN, f"p{i}", sync=False)
        assert task["state"] == "completed"
        assert task["result"]["match"] == (i % 2 == 1)


def test_task_expires_when_workers_do_not_answer(make: Any) -> None:
    harness = make(simulation=SimulationSettings(workers=1, accuracy=1.0, latency=0, seed=1))
    label(harness, 1, "same")
    harness.service.put_task(FN, "lonely", body(1))
    harness.work()  # one worker can take one of the three assignments only
    harness.service.sync()
    assert harness.service.get_task(FN, "lonely", sync=False)["state"] == "processing"
    harness.clock.advance(harness.service.settings.lifetime + 1)
    harness.run()
    task = harness.service.get_task(FN, "lonely", sync=False)
    assert task["state"] == "failed" and task["problemDetails"]["code"] == "Expired"
    assert list(harness.service.turk.list_hits()) == []  # no orphan HIT


# --- money -------------------------------------------------------------------------------


def test_budget_refuses_a_whole_batch_and_stops_at_the_cap(make: Any) -> None:
    harness = make(settings={"MATCH_CROWD_BUDGET": "0.50"})
    # One task commits 3 x (0.05 + 0.01 fee + 0.02 bonus + 0.01 fee) = $0.27.
    harness.service.put_task(FN, "first", body(1))
    with pytest.raises(BudgetExceeded):
        harness.service.put_task(FN, "second", body(2))
    assert harness.service.state.task(FN, "second") is None  # nothing half-created
    with pytest.raises(BudgetExceeded):
        harness.service.verify_matches(
            b"not an image", [{"filepath": "http://images.test/m/1.jpg", "distance": 0.2}] * 1
        )
    assert len(list(harness.service.turk.list_hits())) == 1
    assert harness.service.state.spent() <= 50


def test_budget_checks_the_account_balance(make: Any) -> None:
    harness = make(balance="0.20")
    with pytest.raises(BudgetExceeded, match="GetAccountBalance"):
        harness.service.put_task(FN, "broke", body(1))
    assert list(harness.service.turk.list_hits()) == []


def test_cost_is_recorded_per_task(harness: CrowdHarness) -> None:
    for i in range(3):
        label(harness, i, "different")
        harness.service.put_task(FN, f"c{i}", body(i))
    harness.run()
    state = harness.service.state
    total = state.spent()
    assert total == sum(state.spent(t["id"]) for t in state.all_tasks())
    # After cleanup the ledger is the actual cost: approved rewards + paid bonuses, with fees.
    approved = sum(1 for a in state.assignments() if a["review"] == "approved")
    bonuses = len(state.bonuses(state="paid"))
    assert total == approved * (5 + 1) + bonuses * (2 + 1)
    balance = harness.service.turk.balance()
    assert T.cents("10000.00") - balance == total


# --- crashes and retries ---------------------------------------------------------------


class Crash(Exception):
    pass


def test_crash_after_create_hit_then_retry_makes_no_duplicate(
    harness: CrowdHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    label(harness, 1, "same")
    turk = harness.service.turk
    real_create = turk.create_hit

    def create_then_die(**params: Any) -> dict[str, Any]:
        real_create(**params)  # the HIT exists at the endpoint...
        raise Crash("killed before recording the HITId")  # ...but we never learn its id

    monkeypatch.setattr(turk, "create_hit", create_then_die)
    with pytest.raises(Crash):
        harness.service.put_task(FN, "crashy", body(1))
    monkeypatch.setattr(turk, "create_hit", real_create)
    assert harness.service.state.hits(states=["intent"])  # the intent survived
    harness.service.sync()  # reconcile: the same token, no second HIT
    harness.service.sync()
    assert len(list(turk.list_hits())) == 1
    harness.run()
    assert harness.service.get_task(FN, "crashy", sync=False)["state"] == "completed"


def test_crash_after_send_bonus_then_retry_pays_once(
    harness: CrowdHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(2):
        label(harness, i, "same")
        harness.service.put_task(FN, f"b{i}", body(i))
    harness.work()
    turk = harness.service.turk
    real_call = turk.call
    sent: list[str] = []

    def call(operation: str, **params: Any) -> dict[str, Any]:
        response = real_call(operation, **params)
        if operation == "SendBonus":
            sent.append(params["AssignmentId"])
            if len(sent) == 2:
                raise Crash("killed after the second bonus was paid")
        return response

    monkeypatch.setattr(turk, "call", call)
    with pytest.raises(Crash):
        harness.service.sync()
    monkeypatch.setattr(turk, "call", real_call)
    fresh = type(harness.service)(harness.config, clock=harness.clock)  # a new process, same state
    harness.service = fresh
    harness.run()
    payments = [p for a in fresh.state.assignments() for p in fresh.turk.bonus_payments(a["assignment_id"])]
    ids = [p["AssignmentId"] for p in payments]
    assert len(ids) == len(set(ids)) == len(fresh.state.bonuses(state="paid"))


def test_endpoint_errors_are_translated(harness: CrowdHarness) -> None:
    with pytest.raises(TurkRequestError) as info:
        harness.service.turk.call("GetHIT", HITId="NOSUCHHIT000000000000000000000")
    assert info.value.status == 502


def test_conflicting_put_raises_conflict(harness: CrowdHarness) -> None:
    harness.service.put_task(FN, "x", body(1))
    with pytest.raises(Conflict):
        harness.service.put_task(FN, "x", body(2))


def test_growing_past_ten_makes_a_follow_up_hit(make: Any) -> None:
    """MTurk refuses to grow a HIT made with < 10 assignments to >= 10: a second HIT it is."""
    harness = make(
        simulation=SimulationSettings(workers=12, accuracy=0.4, latency=0, seed=3),
        settings={
            "MATCH_CROWD_ASSIGNMENTS": 9,
            "MATCH_CROWD_MAX_ASSIGNMENTS": 11,
            "MATCH_CROWD_CONFIDENCE": 0.9999,
            "MATCH_CROWD_MAX_SPREAD": 0.0,
            "MATCH_CROWD_BUDGET": "100.00",
        },
    )
    label(harness, 1, "similar")
    harness.service.put_task(FN, "hard", body(1))
    harness.run()
    row = harness.service.state.task(FN, "hard")
    assert row is not None and row["state"] in ("completed", "failed")
    hits = harness.service.state.hits(task_id=row["id"])
    assert [h["max_assignments"] for h in hits] == [9, 2]
    assert len(harness.service.state.assignments(task_id=row["id"])) == 11
    assert list(harness.service.turk.list_hits()) == []


def test_manual_review_holds_bonuses_until_a_person_decides(make: Any) -> None:
    harness = make(settings={"MATCH_CROWD_AUTO_REVIEW": False})
    label(harness, 1, "same")
    harness.service.put_task(FN, "by-hand", body(1))
    harness.work()
    harness.service.sync()
    pending = harness.service.pending_reviews()
    assert len(pending) == 3 and not harness.service.state.bonuses(state="paid")
    first, *rest = pending
    assert (
        harness.service.review(first["assignment_id"], approve=False, feedback="Looked wrong to me.")
        == "rejected"
    )
    with pytest.raises(Conflict):
        harness.service.review(first["assignment_id"], approve=True)
    for assignment in rest:
        assert harness.service.review(assignment["assignment_id"]) == "approved"
    harness.run()
    remote = harness.turk_call("GetAssignment", AssignmentId=first["assignment_id"])["Assignment"]
    assert remote["AssignmentStatus"] == "Rejected" and remote["RequesterFeedback"] == "Looked wrong to me."
    paid = {b["assignment_id"] for b in harness.service.state.bonuses(state="paid")}
    assert first["assignment_id"] not in paid
    assert list(harness.service.turk.list_hits()) == []


def test_settings_parse_raw_values_with_the_settings_table() -> None:
    """A raw "false" is false (``bool("false")`` would be true), and defaults come from
    match.config.SETTINGS alone."""
    from match import config as match_config
    from match.crowd.service import CrowdSettings

    settings = CrowdSettings.from_config({"MATCH_CROWD_AUTO_REVIEW": "false", "MATCH_CROWD_REWARD": "0.10"})
    assert settings.auto_review is False and settings.reward_cents == 10
    defaults = match_config.load(environ={})
    assert CrowdSettings.from_config({}).budget_cents == round(float(defaults["MATCH_CROWD_BUDGET"]) * 100)
    with pytest.raises(ValueError, match="MATCH_CROWD_CONFIDENCE"):
        CrowdSettings.from_config({"MATCH_CROWD_CONFIDENCE": "very"})


def _put_one_task(config: dict[str, Any], ready: Any) -> None:
    """In another process: one put_task on the same crowd state (see below)."""
    from match.crowd.service import CrowdService
    from tests.crowd.conftest import DUMMY_ENV

    os.environ.update(DUMMY_ENV)
    service = CrowdService(config)
    ready.set()
    service.put_task("image-similarity", "from-another-process", body(99))


def test_budget_checks_and_spends_are_serialised_across_processes(harness: CrowdHarness) -> None:
    # Gunicorn workers and the sync sidecar share one crowd state: a budget check and its
    # ledger entry must not interleave with another process's, or both pass the cap.
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_put_one_task, args=(dict(harness.config), ready))
    with harness.service._lock:  # what put_task, sync and review hold while they spend
        child.start()
        assert ready.wait(60), "the other process did not start"
        time.sleep(1.5)
        assert harness.service.state.task("image-similarity", "from-another-process") is None
    child.join(60)
    assert child.exitcode == 0
    assert harness.service.state.task("image-similarity", "from-another-process") is not None
