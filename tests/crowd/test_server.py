"""match's crowd server, driven by real boto3 over loopback exactly as MTurk would be.

Each test gets a fresh server (werkzeug's ``make_server`` on a free loopback port, in a
thread) over a temporary data directory and a fake clock, and a boto3 ``mturk`` client
pointed at it with dummy credentials. Worker pages are driven with Flask's test client
on the same app; simulated workers with :class:`match.crowd.workers.SimulatedCrowd`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest
import requests
import xmltodict
from botocore.config import Config
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import MultiDict
from werkzeug.serving import BaseWSGIServer, make_server

from match.crowd.server import (
    RedactingRequestHandler,
    create_crowd_app,
    create_worker,
    crowd_store,
    rewrite_html_question,
)
from match.crowd.server_store import ANSWER_NAMESPACE, CrowdStore, WorkerError
from match.crowd.workers import SimulatedCrowd, SimulationSettings, parse_question_form

ADMIN_TOKEN = "admin-secret-for-tests"
REQUESTER = "AKIDREQUESTERONE"
START = 1_800_000_000.0
HTML_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
LABELS = ("same", "edited", "similar", "different")


_LOADER = botocore.loaders.create_loader()


def fresh_session() -> boto3.session.Session:
    """A boto3 session that reads credentials from the environment now (boto3's default
    session keeps whatever an earlier test resolved), sharing one loader of botocore's
    service models so each client is quick to make."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Crowd:
    """A running crowd server and what drives it."""

    url: str
    app: Flask
    store: CrowdStore
    clock: FakeClock
    client: Any
    server: BaseWSGIServer
    data_dir: Path

    def mturk(self, access_key: str = REQUESTER) -> Any:
        """Another boto3 client on this server, for requester ``access_key``."""
        return fresh_session().client(
            "mturk",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1}),
        )

    def worker(self) -> tuple[str, FlaskClient]:
        """A new worker (made through the admin API) signed in on a Flask test client."""
        made = requests.post(
            self.url + "admin/workers",
            json={"Name": "tester"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert made.status_code == 201
        browser = self.app.test_client()
        signed_in = browser.post("/worker/login", data={"token": made.json()["Token"]})
        assert signed_in.status_code == 302
        return made.json()["WorkerId"], browser


def _start(data_dir: Path, clock: FakeClock) -> tuple[Flask, BaseWSGIServer]:
    app = create_crowd_app(data_dir, clock=clock, admin_token=ADMIN_TOKEN)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=RedactingRequestHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return app, server


def _stop(app: Flask, server: BaseWSGIServer) -> None:
    server.shutdown()
    server.server_close()
    crowd_store(app).close()


@pytest.fixture
def crowd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Crowd]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", REQUESTER)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    clock = FakeClock()
    app, server = _start(tmp_path / "crowd", clock)
    url = f"http://127.0.0.1:{server.server_port}/"
    client = fresh_session().client(
        "mturk", endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1})
    )
    crowd = Crowd(url, app, crowd_store(app), clock, client, server, tmp_path / "crowd")
    yield crowd
    client.close()
    _stop(crowd.app, crowd.server)


def pair_question(*pairs: str, extra: str = "") -> str:
    """An HTMLQuestion in the convention the simulated workers read: a radio group per pair."""
    groups = "".join(
        f"<fieldset><legend>Pair {pair}</legend>"
        + "".join(
            f'<label><input type="radio" name="q_{pair}" value="{label}" data-pair="{pair}" required>'
            f"{label}</label>"
            for label in LABELS
        )
        + "</fieldset>"
        for pair in pairs
    )
    html = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        '<form name="mturk_form" method="post" id="mturk_form" '
        'action="https://www.mturk.com/mturk/externalSubmit">'
        '<input type="hidden" value="" name="assignmentId" id="assignmentId"/>'
        f'{groups}{extra}<input type="submit" id="submitButton" value="Submit"/></form></body></html>'
    )
    return (
        f'<HTMLQuestion xmlns="{HTML_NS}"><HTMLContent><![CDATA[{html}]]></HTMLContent>'
        "<FrameHeight>600</FrameHeight></HTMLQuestion>"
    )


def make_hit(client: Any, *, max_assignments: int = 1, reward: str = "0.10", **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "MaxAssignments": max_assignments,
        "LifetimeInSeconds": 3600,
        "AssignmentDurationInSeconds": 600,
        "Reward": reward,
        "Title": "Are these two images the same picture?",
        "Description": "Compare two images.",
        "Question": pair_question("gold1", "real1"),
        **extra,
    }
    hit: dict[str, Any] = client.create_hit(**params)["HIT"]
    return hit


def submit_directly(store: CrowdStore, hit_id: str, answers: dict[str, str] | None = None) -> tuple[str, str]:
    """A fresh worker accepts and submits ``hit_id`` through the store; (worker, assignment)."""
    worker = store.create_worker("direct").worker_id
    assignment = store.accept_hit(worker, hit_id)
    store.submit_assignment(
        assignment, list((answers or {"q_gold1": "same", "q_real1": "different"}).items())
    )
    return worker, assignment


def error_of(excinfo: pytest.ExceptionInfo[Any]) -> tuple[str, str]:
    """(TurkErrorCode, Message) of a botocore RequestError."""
    response = excinfo.value.response
    return response["TurkErrorCode"], response["Error"]["Message"]


# -- requester API ------------------------------------------------------------------------


def test_every_operation_match_uses_is_served(crowd: Crowd) -> None:
    wanted = {
        "GetAccountBalance", "CreateHITType", "CreateHITWithHITType", "CreateHIT", "GetHIT", "ListHITs",
        "ListAssignmentsForHIT", "GetAssignment", "ApproveAssignment", "RejectAssignment", "SendBonus",
        "ListBonusPayments", "NotifyWorkers", "CreateAdditionalAssignmentsForHIT", "UpdateExpirationForHIT",
        "DeleteHIT", "CreateQualificationType", "AssociateQualificationWithWorker",
        "DisassociateQualificationFromWorker", "CreateWorkerBlock", "DeleteWorkerBlock", "ListWorkerBlocks",
        "ListReviewableHITs", "UpdateHITReviewStatus",
    }  # fmt: skip
    assert wanted <= set(crowd.store.operations())
    unknown = requests.post(
        crowd.url,
        data="{}",
        headers={"X-Amz-Target": "MTurkRequesterServiceV20170117.ListQualificationRequests"},
    )
    assert unknown.status_code == 400 and unknown.json()["__type"] == "UnknownOperationException"


def test_hit_type_and_hit(crowd: Crowd) -> None:
    type_params = {
        "AutoApprovalDelayInSeconds": 3600,
        "AssignmentDurationInSeconds": 300,
        "Reward": "0.05",
        "Title": "Compare images",
        "Description": "Say whether two images are the same picture.",
        "Keywords": "image, compare",
    }
    hit_type = crowd.client.create_hit_type(**type_params)["HITTypeId"]
    assert crowd.client.create_hit_type(**type_params)["HITTypeId"] == hit_type  # equal fields, one type
    question = pair_question("a", "b")
    hit = crowd.client.create_hit_with_hit_type(
        HITTypeId=hit_type,
        MaxAssignments=3,
        LifetimeInSeconds=600,
        Question=question,
        RequesterAnnotation="batch-1",
    )["HIT"]
    got = crowd.client.get_hit(HITId=hit["HITId"])["HIT"]
    assert got["HITTypeId"] == hit_type
    assert got["HITStatus"] == "Assignable"
    assert got["Reward"] == "0.05" and got["Keywords"] == "image, compare"
    assert got["Question"] == question and got["RequesterAnnotation"] == "batch-1"
    assert got["MaxAssignments"] == 3 and got["NumberOfAssignmentsAvailable"] == 3
    assert got["AutoApprovalDelayInSeconds"] == 3600 and got["AssignmentDurationInSeconds"] == 300
    assert got["CreationTime"] == datetime.fromtimestamp(START, UTC)
    assert got["Expiration"] == datetime.fromtimestamp(START + 600, UTC)
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.get_hit(HITId="3NOSUCHHIT0000000000000000000Z")
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.HITDoesNotExist"
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.create_hit_with_hit_type(
            HITTypeId="3NOSUCHTYPE", LifetimeInSeconds=600, Question=question
        )


def test_unique_request_token_retry_creates_no_second_hit(crowd: Crowd) -> None:
    first = make_hit(crowd.client, max_assignments=3, UniqueRequestToken="batch-7-pair-42")
    balance = crowd.client.get_account_balance()
    for create in (crowd.client.create_hit, crowd.client.create_hit):
        with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
            create(
                MaxAssignments=3, LifetimeInSeconds=3600, AssignmentDurationInSeconds=600, Reward="0.10",
                Title="t", Description="d", Question=pair_question("x"), UniqueRequestToken="batch-7-pair-42",
            )  # fmt: skip
        code, message = error_of(excinfo)
        assert code == "AWS.MechanicalTurk.HitAlreadyExists"
        assert first["HITId"] in message
    hit_type = crowd.client.create_hit_type(
        AssignmentDurationInSeconds=600, Reward="0.10", Title="t", Description="d"
    )["HITTypeId"]
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.create_hit_with_hit_type(
            HITTypeId=hit_type,
            LifetimeInSeconds=600,
            Question=pair_question("x"),
            UniqueRequestToken="batch-7-pair-42",
        )
    assert [hit["HITId"] for hit in crowd.client.list_hits()["HITs"]] == [first["HITId"]]
    assert crowd.client.get_account_balance()["AvailableBalance"] == balance["AvailableBalance"]
    # Tokens are per requester and last 24 hours.
    other = crowd.mturk("AKIDREQUESTERTWO")
    assert make_hit(other, UniqueRequestToken="batch-7-pair-42")["HITId"] != first["HITId"]
    other.close()
    crowd.clock.advance(24 * 3600 + 1)
    assert make_hit(crowd.client, UniqueRequestToken="batch-7-pair-42")["HITId"] != first["HITId"]


def test_concurrent_retries_make_one_hit(crowd: Crowd) -> None:
    """Eight clients racing with one UniqueRequestToken: one HIT, seven HitAlreadyExists."""
    clients = [crowd.mturk() for _ in range(8)]
    barrier = threading.Barrier(len(clients))

    def create(client: Any) -> str:
        barrier.wait()
        try:
            return str(make_hit(client, max_assignments=3, UniqueRequestToken="race")["HITId"])
        except client.exceptions.RequestError as exc:
            return str(exc.response["TurkErrorCode"])

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(create, clients))
    for client in clients:
        client.close()
    assert sorted(outcomes).count("AWS.MechanicalTurk.HitAlreadyExists") == 7
    assert crowd.client.list_hits()["NumResults"] == 1
    assert crowd.client.get_account_balance()["OnHoldBalance"] == "0.36"


@pytest.mark.parametrize(
    "question, reason",
    [
        ("<HTMLQuestion", "not well-formed"),
        (pair_question("a").replace("</HTMLContent>", "</HTMLContent2>"), "not well-formed"),
        ('<QuestionForm xmlns="x"><Question/></QuestionForm>', "HTMLQuestion or an ExternalQuestion"),
        (pair_question("a").replace(HTML_NS, "http://example.com/HTMLQuestion.xsd"), "namespace"),
        (pair_question("a").replace("<FrameHeight>600</FrameHeight>", ""), "FrameHeight"),
        (pair_question("a", extra="x" * 70_000), "larger than 65535 bytes"),
        ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>' + pair_question("a"), "document type"),
    ],
)
def test_question_must_be_a_valid_html_or_external_question(crowd: Crowd, question: str, reason: str) -> None:
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        make_hit(crowd.client, Question=question)
    assert reason in error_of(excinfo)[1]
    assert crowd.client.list_hits()["NumResults"] == 0


def test_parameter_validation_is_a_request_error(crowd: Crowd) -> None:
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        make_hit(crowd.client, reward="0.123")
    assert "US dollars" in error_of(excinfo)[1]
    with pytest.raises(crowd.client.exceptions.RequestError):
        make_hit(crowd.client, LifetimeInSeconds=5)
    with pytest.raises(crowd.client.exceptions.RequestError):
        make_hit(crowd.client, HITLayoutId="3LAYOUT")


def test_additional_assignments_keep_the_under_10_rule_and_are_idempotent(crowd: Crowd) -> None:
    small = make_hit(crowd.client, max_assignments=5)["HITId"]
    crowd.client.create_additional_assignments_for_hit(
        HITId=small, NumberOfAdditionalAssignments=4, UniqueRequestToken="extend-1"
    )
    assert crowd.client.get_hit(HITId=small)["HIT"]["MaxAssignments"] == 9
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.create_additional_assignments_for_hit(
            HITId=small, NumberOfAdditionalAssignments=4, UniqueRequestToken="extend-1"
        )
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.DuplicateRequest"
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.create_additional_assignments_for_hit(HITId=small, NumberOfAdditionalAssignments=1)
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease"
    assert crowd.client.get_hit(HITId=small)["HIT"]["MaxAssignments"] == 9
    big = make_hit(crowd.client, max_assignments=10)["HITId"]
    crowd.client.create_additional_assignments_for_hit(HITId=big, NumberOfAdditionalAssignments=5)
    assert crowd.client.get_hit(HITId=big)["HIT"]["MaxAssignments"] == 15


def test_delete_hit_only_when_reviewable_and_reviewed(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=2)["HITId"]
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.delete_hit(HITId=hit)
    assert "'Assignable'" in error_of(excinfo)[1]
    _, assignment = submit_directly(crowd.store, hit)
    crowd.client.update_expiration_for_hit(HITId=hit, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Reviewable"
    with pytest.raises(crowd.client.exceptions.RequestError):  # a submitted assignment is not reviewed yet
        crowd.client.delete_hit(HITId=hit)
    crowd.client.approve_assignment(AssignmentId=assignment)
    crowd.client.delete_hit(HITId=hit)
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Disposed"
    assert crowd.client.list_hits()["HITs"] == []
    # A HIT with a worker still on it is Unassignable after expiry and can't be deleted either.
    busy = make_hit(crowd.client)["HITId"]
    crowd.store.accept_hit(crowd.store.create_worker().worker_id, busy)
    crowd.client.update_expiration_for_hit(HITId=busy, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    assert crowd.client.get_hit(HITId=busy)["HIT"]["HITStatus"] == "Unassignable"
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.delete_hit(HITId=busy)
    # An expired HIT nobody took can go.
    empty = make_hit(crowd.client)["HITId"]
    crowd.client.update_expiration_for_hit(HITId=empty, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    crowd.client.delete_hit(HITId=empty)


def test_hit_lifecycle_expiry_abandonment_and_auto_approval(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=1, AutoApprovalDelayInSeconds=3600)["HITId"]
    worker = crowd.store.create_worker().worker_id
    taken = crowd.store.accept_hit(worker, hit)
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Unassignable"
    crowd.clock.advance(601)  # past AssignmentDurationInSeconds: abandoned, the place opens again
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Assignable"
    with pytest.raises(WorkerError):
        crowd.store.submit_assignment(taken, [("q_gold1", "same")])
    _, assignment = submit_directly(crowd.store, hit)
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Reviewable"
    got = crowd.client.get_assignment(AssignmentId=assignment)["Assignment"]
    assert got["AssignmentStatus"] == "Submitted"
    assert got["AutoApprovalTime"] == datetime.fromtimestamp(START + 601 + 3600, UTC)
    crowd.clock.advance(3601)
    assert (
        crowd.client.get_assignment(AssignmentId=assignment)["Assignment"]["AssignmentStatus"] == "Approved"
    )
    # The lifetime runs out for a HIT nobody finished.
    other = make_hit(crowd.client)["HITId"]
    crowd.clock.advance(3601)
    assert crowd.client.get_hit(HITId=other)["HIT"]["HITStatus"] == "Reviewable"
    crowd.client.update_expiration_for_hit(
        HITId=other, ExpireAt=datetime.fromtimestamp(crowd.clock.now + 60, UTC)
    )
    assert crowd.client.get_hit(HITId=other)["HIT"]["HITStatus"] == "Assignable"


def test_approve_reject_and_override(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=2)["HITId"]
    _, first = submit_directly(crowd.store, hit)
    _, second = submit_directly(crowd.store, hit)
    crowd.client.approve_assignment(AssignmentId=first, RequesterFeedback="Thanks!")
    crowd.client.reject_assignment(AssignmentId=second, RequesterFeedback="Gold pair answered wrongly.")
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.approve_assignment(AssignmentId=first)
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.InvalidAssignmentState"
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.approve_assignment(AssignmentId=second)
    rejected = crowd.client.get_assignment(AssignmentId=second)["Assignment"]
    assert rejected["AssignmentStatus"] == "Rejected"
    assert rejected["RequesterFeedback"] == "Gold pair answered wrongly."
    crowd.client.approve_assignment(AssignmentId=second, OverrideRejection=True)
    assert crowd.client.get_assignment(AssignmentId=second)["Assignment"]["AssignmentStatus"] == "Approved"
    hit_view = crowd.client.get_hit(HITId=hit)["HIT"]
    assert hit_view["NumberOfAssignmentsCompleted"] == 2 and hit_view["HITStatus"] == "Reviewable"


def test_list_assignments_pagination_and_status_filter(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=7)["HITId"]
    assignments = [submit_directly(crowd.store, hit)[1] for _ in range(7)]
    for assignment in assignments[:3]:
        crowd.client.approve_assignment(AssignmentId=assignment)
    crowd.client.reject_assignment(AssignmentId=assignments[3], RequesterFeedback="no")
    seen: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = crowd.client.list_assignments_for_hit(HITId=hit, MaxResults=3, **token)
        assert page["NumResults"] == len(page["Assignments"]) <= 3
        seen += [a["AssignmentId"] for a in page["Assignments"]]
        if "NextToken" not in page:
            break
        token = {"NextToken": page["NextToken"]}
    assert seen == assignments
    submitted = crowd.client.list_assignments_for_hit(HITId=hit, AssignmentStatuses=["Submitted"])
    assert [a["AssignmentId"] for a in submitted["Assignments"]] == assignments[4:]
    reviewed = crowd.client.list_assignments_for_hit(HITId=hit, AssignmentStatuses=["Approved", "Rejected"])
    assert reviewed["NumResults"] == 4
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.list_assignments_for_hit(HITId=hit, NextToken="not-a-token")


def test_list_hits_pagination_reviewable_and_review_status(crowd: Crowd) -> None:
    hits = [make_hit(crowd.client)["HITId"] for _ in range(23)]
    pages = list(crowd.client.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 10}))
    assert [page["NumResults"] for page in pages] == [10, 10, 3]
    assert [hit["HITId"] for page in pages for hit in page["HITs"]] == hits
    for hit in hits[:4]:
        submit_directly(crowd.store, hit)
    reviewable = crowd.client.list_reviewable_hits(MaxResults=3)
    assert [h["HITId"] for h in reviewable["HITs"]] == hits[:3] and "NextToken" in reviewable
    rest = crowd.client.list_reviewable_hits(MaxResults=3, NextToken=reviewable["NextToken"])
    assert [h["HITId"] for h in rest["HITs"]] == hits[3:4] and "NextToken" not in rest
    crowd.client.update_hit_review_status(HITId=hits[0])
    assert crowd.client.get_hit(HITId=hits[0])["HIT"]["HITStatus"] == "Reviewing"
    assert [h["HITId"] for h in crowd.client.list_reviewable_hits(Status="Reviewing")["HITs"]] == hits[:1]
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.update_hit_review_status(HITId=hits[0])  # already Reviewing
    crowd.client.update_hit_review_status(HITId=hits[0], Revert=True)
    assert crowd.client.get_hit(HITId=hits[0])["HIT"]["HITStatus"] == "Reviewable"
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.update_hit_review_status(HITId=hits[10])  # still Assignable


def test_balance_fees_reservations_and_bonuses(crowd: Crowd) -> None:
    def balance() -> tuple[str, str]:
        answer = crowd.client.get_account_balance()
        return answer["AvailableBalance"], answer["OnHoldBalance"]

    assert balance() == ("10000.00", "0.00")
    small = make_hit(crowd.client, max_assignments=3, reward="0.10")["HITId"]  # 3 x (0.10 + 20 %)
    assert balance() == ("9999.64", "0.36")
    make_hit(crowd.client, max_assignments=10, reward="0.10")  # 10 x (0.10 + 40 %)
    assert balance() == ("9998.24", "1.76")
    make_hit(crowd.client, max_assignments=1, reward="0.01")  # the fee is at least a cent
    assert balance() == ("9998.22", "1.78")
    worker, first = submit_directly(crowd.store, small)
    _, second = submit_directly(crowd.store, small)
    crowd.client.approve_assignment(AssignmentId=first)  # reserved money is now spent
    assert balance() == ("9998.22", "1.66")
    crowd.client.reject_assignment(AssignmentId=second, RequesterFeedback="no")  # its reservation comes back
    assert balance() == ("9998.34", "1.54")
    crowd.client.update_expiration_for_hit(HITId=small, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
    assert balance() == ("9998.46", "1.42")  # the place nobody took is released
    crowd.client.send_bonus(
        WorkerId=worker,
        BonusAmount="1.00",
        AssignmentId=first,
        Reason="Great work",
        UniqueRequestToken="bonus-1",
    )
    assert balance() == ("9997.26", "1.42")  # bonus plus 20 %
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        crowd.client.send_bonus(
            WorkerId=worker,
            BonusAmount="1.00",
            AssignmentId=first,
            Reason="Great work",
            UniqueRequestToken="bonus-1",
        )
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.DuplicateRequest"
    assert balance() == ("9997.26", "1.42")
    payments = crowd.client.list_bonus_payments(AssignmentId=first)["BonusPayments"]
    assert [(p["WorkerId"], p["BonusAmount"], p["Reason"]) for p in payments] == [
        (worker, "1.00", "Great work")
    ]
    assert crowd.client.list_bonus_payments(HITId=small)["NumResults"] == 1
    with pytest.raises(crowd.client.exceptions.RequestError):  # the worker must be the assignment's
        crowd.client.send_bonus(WorkerId="AOTHERWORKER1", BonusAmount="1.00", AssignmentId=first, Reason="x")
    # An admin sets the balance; MTurk refuses HITs the requester can't pay for.
    topped = requests.post(
        crowd.url + "admin/balance",
        json={"AccessKeyId": REQUESTER, "AvailableBalance": "0.50"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert topped.json()["AvailableBalance"] == "0.50"
    with pytest.raises(crowd.client.exceptions.RequestError) as excinfo:
        make_hit(crowd.client, max_assignments=5, reward="0.10")
    assert error_of(excinfo)[0] == "AWS.MechanicalTurk.InsufficientFunds"
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.send_bonus(WorkerId=worker, BonusAmount="5.00", AssignmentId=first, Reason="too much")
    assert balance()[0] == "0.50"
    assert crowd.mturk("AKIDSOMEONEELSE").get_account_balance()["AvailableBalance"] == "10000.00"


def test_notify_workers(crowd: Crowd) -> None:
    with pytest.raises(crowd.client.exceptions.RequestError):
        crowd.client.notify_workers(
            Subject="Hello", MessageText="Hi", WorkerIds=[f"A{index:012d}" for index in range(101)]
        )
    hit = make_hit(crowd.client, max_assignments=2)["HITId"]
    worker_id, browser = crowd.worker()
    assignment = crowd.store.accept_hit(worker_id, hit)
    crowd.store.submit_assignment(assignment, [("q_gold1", "same")])
    never = crowd.store.create_worker().worker_id
    answer = crowd.client.notify_workers(
        Subject="New HITs", MessageText="A new batch is up.", WorkerIds=[worker_id, never]
    )  # the worker's work is not reviewed yet: MTurk refuses both
    assert {f["WorkerId"] for f in answer["NotifyWorkersFailureStatuses"]} == {worker_id, never}
    crowd.client.approve_assignment(AssignmentId=assignment)
    answer = crowd.client.notify_workers(
        Subject="New HITs", MessageText="A new batch is up.", WorkerIds=[worker_id, never]
    )
    failures = answer["NotifyWorkersFailureStatuses"]
    assert [(f["WorkerId"], f["NotifyWorkersFailureCode"]) for f in failures] == [(never, "HardFailure")]
    crowd.client.send_bonus(
        WorkerId=worker_id, BonusAmount="0.25", AssignmentId=assignment, Reason="Accurate!"
    )
    page = browser.get("/worker").get_data(as_text=True)
    assert "New HITs" in page and "A new batch is up." in page
    assert "$0.25" in page and "Accurate!" in page


def test_qualifications_and_blocks_decide_who_may_accept(crowd: Crowd) -> None:
    qualification = crowd.client.create_qualification_type(
        Name="Passed the image test",
        Description="Scored well on gold pairs",
        QualificationTypeStatus="Active",
    )["QualificationType"]["QualificationTypeId"]
    with pytest.raises(crowd.client.exceptions.RequestError):  # names are unique per requester
        crowd.client.create_qualification_type(Name="Passed the image test", Description="x",
                                               QualificationTypeStatus="Active")  # fmt: skip
    requirement = {
        "QualificationTypeId": qualification,
        "Comparator": "GreaterThanOrEqualTo",
        "IntegerValues": [80],
    }
    hit = make_hit(crowd.client, max_assignments=5, QualificationRequirements=[requirement])["HITId"]
    worker = crowd.store.create_worker().worker_id
    listed = crowd.store.available_hits(worker)
    assert [(h["HITId"], h["CanAccept"]) for h in listed] == [(hit, False)]
    with pytest.raises(WorkerError):
        crowd.store.accept_hit(worker, hit)
    crowd.client.associate_qualification_with_worker(
        QualificationTypeId=qualification, WorkerId=worker, IntegerValue=90
    )
    crowd.client.create_worker_block(WorkerId=worker, Reason="Spamming")
    assert crowd.store.available_hits(worker) == []
    with pytest.raises(WorkerError):
        crowd.store.accept_hit(worker, hit)
    blocks = crowd.client.list_worker_blocks()["WorkerBlocks"]
    assert blocks == [{"WorkerId": worker, "Reason": "Spamming"}]
    crowd.client.delete_worker_block(WorkerId=worker, Reason="Appeal accepted")
    assert crowd.client.list_worker_blocks()["NumResults"] == 0
    assignment = crowd.store.accept_hit(worker, hit)
    with pytest.raises(WorkerError):  # once per worker per HIT
        crowd.store.accept_hit(worker, hit)
    crowd.store.return_assignment(worker, assignment)
    crowd.client.disassociate_qualification_from_worker(QualificationTypeId=qualification, WorkerId=worker)
    with pytest.raises(WorkerError):
        crowd.store.accept_hit(worker, hit)
    # A locale requirement and a hidden HIT.
    us_only = {
        "QualificationTypeId": "00000000000000000071",
        "Comparator": "EqualTo",
        "LocaleValues": [{"Country": "US"}],
    }
    hidden = dict(requirement, ActionsGuarded="DiscoverPreviewAndAccept")
    open_hit = make_hit(crowd.client, QualificationRequirements=[us_only])["HITId"]
    make_hit(crowd.client, QualificationRequirements=[hidden])
    german = crowd.store.create_worker(locale="DE").worker_id
    assert [(h["HITId"], h["CanAccept"]) for h in crowd.store.available_hits(german)] == [
        (hit, False),
        (open_hit, False),
    ]
    blocks_page = crowd.client.list_worker_blocks(MaxResults=1)
    assert blocks_page["NumResults"] == 0


def test_max_assignments_is_respected(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=2)["HITId"]
    workers = [crowd.store.create_worker().worker_id for _ in range(3)]
    crowd.store.accept_hit(workers[0], hit)
    crowd.store.accept_hit(workers[1], hit)
    assert crowd.store.available_hits(workers[2]) == []
    with pytest.raises(WorkerError):
        crowd.store.accept_hit(workers[2], hit)


def test_requesters_only_see_their_own_hits(crowd: Crowd) -> None:
    hit = make_hit(crowd.client)["HITId"]
    other = crowd.mturk("AKIDREQUESTERTWO")
    with pytest.raises(other.exceptions.RequestError):
        other.get_hit(HITId=hit)
    assert other.list_hits()["HITs"] == []
    other.close()


# -- worker pages -------------------------------------------------------------------------


def test_worker_does_a_hit_through_the_web_form(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=1)["HITId"]
    worker_id, browser = crowd.worker()
    home = browser.get("/worker").get_data(as_text=True)
    assert worker_id in home and "Are these two images the same picture?" in home and hit in home
    preview = browser.get(f"/worker/hits/{hit}").get_data(as_text=True)
    assert (
        "Accept this HIT" in preview
        and f"/worker/hits/{hit}/content?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE" in preview
    )
    preview_html = browser.get(f"/worker/hits/{hit}/content").get_data(as_text=True)
    assert ("assignmentId", "ASSIGNMENT_ID_NOT_AVAILABLE") in parse_question_form(preview_html).fields
    refused = browser.post(
        "/mturk/externalSubmit", data={"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "q_gold1": "x"}
    )
    assert refused.status_code == 409
    accepted = browser.post("/worker/accept", data={"hit_id": hit})
    assert accepted.status_code == 302
    task_url = accepted.headers["Location"]
    assignment = task_url.rstrip("/").rsplit("/", 1)[1]
    task = browser.get(task_url).get_data(as_text=True)
    assert "<iframe" in task and "sandbox=" in task
    content = browser.get(f"/worker/assignments/{assignment}/content")
    assert "sandbox" in content.headers["Content-Security-Policy"]
    html = content.get_data(as_text=True)
    assert 'action="/mturk/externalSubmit"' in html and "www.mturk.com" not in html
    form = parse_question_form(html)
    assert ("assignmentId", assignment) in form.fields
    assert set(form.groups) == {"q_gold1", "q_real1"}
    # The browser posts the form: hidden assignmentId first, then the chosen radios, a comment with non-ASCII.
    submitted = browser.post(
        "/mturk/externalSubmit",
        data=MultiDict(
            [
                ("assignmentId", assignment),
                ("q_gold1", "same"),
                ("q_real1", "edited"),
                ("comment", "café <ok> & ✓"),
            ]
        ),
    )
    assert submitted.status_code == 200 and "submitted" in submitted.get_data(as_text=True)
    again = browser.post("/mturk/externalSubmit", data={"assignmentId": assignment, "q_gold1": "same"})
    assert again.status_code == 409
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Reviewable"
    listed = crowd.client.list_assignments_for_hit(HITId=hit)["Assignments"]
    assert [(a["AssignmentId"], a["WorkerId"], a["AssignmentStatus"]) for a in listed] == [
        (assignment, worker_id, "Submitted")
    ]
    xml = listed[0]["Answer"]
    assert xml.startswith(
        f'<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="{ANSWER_NAMESPACE}"><Answer>'
        "<QuestionIdentifier>q_gold1</QuestionIdentifier><FreeText>same</FreeText></Answer>"
    )
    xml.encode("ascii")
    answers = xmltodict.parse(xml, force_list=("Answer",))["QuestionFormAnswers"]["Answer"]
    assert [(a["QuestionIdentifier"], a["FreeText"]) for a in answers] == [
        ("q_gold1", "same"),
        ("q_real1", "edited"),
        ("comment", "café <ok> & ✓"),
    ]
    done = browser.get("/worker").get_data(as_text=True)
    assert "Submitted" in done


def test_worker_sign_in_return_and_refusals(crowd: Crowd, caplog: pytest.LogCaptureFixture) -> None:
    made = requests.post(
        crowd.url + "admin/workers", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    token = made.json()["Token"]
    assert requests.post(crowd.url + "admin/workers", json={}).status_code == 401
    assert "Sign in" in requests.get(crowd.url + "worker").text
    assert requests.post(crowd.url + "worker/login", data={"token": "wrong"}).status_code == 403
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        session = requests.Session()
        page = session.get(crowd.url + "worker", params={"token": token})  # the link form signs in too
    assert made.json()["WorkerId"] in page.text
    assert caplog.records and token not in caplog.text and "token=REDACTED" in caplog.text
    hit = make_hit(crowd.client, max_assignments=1)["HITId"]
    accepted = session.post(crowd.url + "worker/accept", data={"hit_id": hit}, allow_redirects=False)
    assignment = accepted.headers["Location"].rsplit("/", 1)[1]
    assert crowd.client.get_hit(HITId=hit)["HIT"]["NumberOfAssignmentsPending"] == 1
    returned = session.post(crowd.url + f"worker/assignments/{assignment}/return")
    assert "HIT returned." in returned.text
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Assignable"
    assert "no longer available" in session.post(crowd.url + "worker/accept", data={"hit_id": "3NOPE"}).text
    assert requests.get(crowd.url + f"worker/assignments/{assignment}/content").url.endswith("/worker")
    session.close()


def test_rewrite_html_question_fills_assignment_id_and_form_action() -> None:
    sandbox = (
        '<form action="https://workersandbox.mturk.com/mturk/externalSubmit" method="post">'
        "<input type=hidden name=assignmentId value=''><input name=q_a></form>"
    )
    rewritten = rewrite_html_question(sandbox, "3ASSIGNMENT", "/mturk/externalSubmit")
    assert 'action="/mturk/externalSubmit"' in rewritten
    assert 'value="3ASSIGNMENT"' in rewritten and "value=''" not in rewritten
    bare = rewrite_html_question(
        "<form method=post action='https://www.mturk.com/mturk/externalSubmit'><input name=q_a></form>",
        "3ASSIGNMENT",
        "/mturk/externalSubmit",
    )
    assert '<input type="hidden" name="assignmentId" value="3ASSIGNMENT">' in bare


# -- durability ---------------------------------------------------------------------------


def test_state_survives_a_restart(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=2, UniqueRequestToken="persist")["HITId"]
    worker, assignment = submit_directly(crowd.store, hit)
    crowd.client.approve_assignment(AssignmentId=assignment)
    before = crowd.client.get_account_balance()["AvailableBalance"]
    account = create_worker(crowd.data_dir, "offline")  # the CLI path, on the same directory
    _stop(crowd.app, crowd.server)
    crowd.app, crowd.server = _start(crowd.data_dir, crowd.clock)
    crowd.store = crowd_store(crowd.app)
    crowd.url = f"http://127.0.0.1:{crowd.server.server_port}/"
    client = crowd.mturk()
    try:
        assert client.get_hit(HITId=hit)["HIT"]["NumberOfAssignmentsCompleted"] == 1
        (listed,) = client.list_assignments_for_hit(HITId=hit)["Assignments"]
        assert listed["AssignmentId"] == assignment and listed["WorkerId"] == worker
        assert client.get_account_balance()["AvailableBalance"] == before
        with pytest.raises(client.exceptions.RequestError):
            make_hit(client, UniqueRequestToken="persist")
        assert (
            account.token is not None and crowd.store.authenticate_worker(account.token) == account.worker_id
        )
    finally:
        client.close()


# -- simulated workers --------------------------------------------------------------------


def _simulated_answers(
    crowd: Crowd, settings: SimulationSettings, truth: dict[str, str], hits: int
) -> list[bool]:
    """Run ``settings`` on ``hits`` two-pair HITs with 3 assignments; whether each answer is right."""
    hit_ids = []
    for index in range(hits):
        question = pair_question(f"gold{index}", f"real{index}")
        hit_ids.append(make_hit(crowd.client, max_assignments=3, Question=question)["HITId"])
    simulation = SimulatedCrowd(crowd.store, settings, truth)
    simulation.run_until_idle()
    right = []
    for hit in hit_ids:
        assignments = crowd.client.list_assignments_for_hit(HITId=hit)["Assignments"]
        assert len(assignments) == 3
        for assignment in assignments:
            answers = xmltodict.parse(assignment["Answer"], force_list=("Answer",))["QuestionFormAnswers"][
                "Answer"
            ]
            assert [a["QuestionIdentifier"] for a in answers][-2:] == [
                f"q_gold{hit_ids.index(hit)}",
                f"q_real{hit_ids.index(hit)}",
            ]
            for answer in answers:
                if answer["QuestionIdentifier"].startswith("q_"):
                    right.append(answer["FreeText"] == truth[answer["QuestionIdentifier"][2:]])
    return right


def test_simulated_workers_answer_with_the_configured_accuracy(crowd: Crowd) -> None:
    truth = {f"{kind}{index}": LABELS[index % 4] for index in range(60) for kind in ("gold", "real")}
    settings = SimulationSettings(workers=12, accuracy=0.7, latency=0, seed=7)
    right = _simulated_answers(crowd, settings, truth, 60)
    assert len(right) == 60 * 3 * 2
    assert 0.62 <= sum(right) / len(right) <= 0.78


def test_simulated_spammers_and_bias(crowd: Crowd) -> None:
    truth = {f"{kind}{index}": "different" for index in range(40) for kind in ("gold", "real")}
    settings = SimulationSettings(workers=10, accuracy=1.0, spammers=0.5, latency=0, seed=3)
    right = _simulated_answers(crowd, settings, truth, 40)
    assert 0.55 <= sum(right) / len(right) <= 0.70  # half are perfect, half right one time in four
    biased = SimulatedCrowd(crowd.store, SimulationSettings(accuracy=0.0, bias=1.0, seed=1))
    wrong = [biased.workers[0].choose(list(LABELS), "different", biased.settings) for _ in range(600)]
    assert wrong.count("same") > wrong.count("edited") > wrong.count("similar")
    assert "different" not in wrong
    near = SimulatedCrowd(crowd.store, SimulationSettings(accuracy=0.0, errors="adjacent", seed=1))
    confused = [near.workers[0].choose(list(LABELS), "same", near.settings) for _ in range(1100)]
    assert confused.count("edited") > confused.count("similar") > confused.count("different") > 100


def test_simulated_no_shows_are_abandoned_and_latency_waits_for_the_clock(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=2)["HITId"]
    no_shows = SimulatedCrowd(crowd.store, SimulationSettings(workers=2, no_shows=1.0, latency=0, seed=1))
    assert no_shows.run_once() == 2
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Unassignable"
    crowd.clock.advance(601)
    assert crowd.client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Assignable"
    slow = SimulatedCrowd(crowd.store, SimulationSettings(workers=4, latency=30, seed=2), {"gold1": "same"})
    slow.run_once()
    assert crowd.client.list_assignments_for_hit(HITId=hit)["NumResults"] == 0
    crowd.clock.advance(300)
    slow.run_until_idle()
    assert crowd.client.list_assignments_for_hit(HITId=hit)["NumResults"] == 2


def test_simulation_settings_parse() -> None:
    settings = SimulationSettings.parse("accuracy=0.7, spammers=0.2,bias=same,workers=20,latency=0,seed=5")
    assert settings == SimulationSettings(
        workers=20, accuracy=0.7, bias=1.0, spammers=0.2, latency=0.0, seed=5
    )
    assert SimulationSettings.parse("bias=-0.5,field_prefix=pair_").field_prefix == "pair_"
    assert SimulationSettings.parse("errors=adjacent").errors == "adjacent"
    for bad in ("accuracy=2", "speed=3", "accuracy", "errors=sometimes"):
        with pytest.raises(ValueError):
            SimulationSettings.parse(bad)


def test_simulated_crowd_thread_starts_and_stops(crowd: Crowd) -> None:
    hit = make_hit(crowd.client, max_assignments=1)["HITId"]
    simulation = SimulatedCrowd(crowd.store, SimulationSettings(workers=1, latency=0, interval=0.01, seed=1))
    simulation.start()
    try:
        for _ in range(500):
            if crowd.client.list_assignments_for_hit(HITId=hit)["NumResults"]:
                break
            threading.Event().wait(0.01)
    finally:
        simulation.stop()
    assert crowd.client.list_assignments_for_hit(HITId=hit)["NumResults"] == 1


def test_external_question_is_framed_with_mturk_parameters(crowd: Crowd) -> None:
    external = (
        '<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/'
        '2006-07-14/ExternalQuestion.xsd"><ExternalURL>https://tasks.example/pair?batch=1</ExternalURL>'
        "<FrameHeight>0</FrameHeight></ExternalQuestion>"
    )
    hit = make_hit(crowd.client, Question=external)["HITId"]
    worker_id, browser = crowd.worker()
    task_url = browser.post("/worker/accept", data={"hit_id": hit}).headers["Location"]
    page = browser.get(task_url).get_data(as_text=True)
    assert "https://tasks.example/pair?batch=1&amp;assignmentId=" in page
    assert f"workerId={worker_id}" in page and "turkSubmitTo=http%3A%2F%2Flocalhost" in page
    simulation = SimulatedCrowd(crowd.store, SimulationSettings(workers=1, latency=0, seed=1))
    simulation.run_until_idle()  # it can't open the requester's site: it returns the HIT
    assert crowd.client.get_hit(HITId=hit)["HIT"]["NumberOfAssignmentsPending"] == 1  # only the person's


def test_serve_runs_the_api_and_simulated_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from match.crowd.server import serve

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    ready: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=("127.0.0.1", 0, tmp_path / "served"),
        kwargs={"simulate": "workers=2,latency=0,interval=0.01,seed=4", "ready": ready.append, "stop": stop},
        daemon=True,
    )
    thread.start()
    for _ in range(500):
        if ready:
            break
        threading.Event().wait(0.01)
    client = fresh_session().client(
        "mturk", endpoint_url=ready[0], region_name="us-east-1", aws_access_key_id="AKIDSERVE",
        aws_secret_access_key="test",
    )  # fmt: skip
    try:
        hit = make_hit(client, max_assignments=2)["HITId"]
        for _ in range(500):
            if client.get_hit(HITId=hit)["HIT"]["HITStatus"] == "Reviewable":
                break
            threading.Event().wait(0.01)
        assert client.list_assignments_for_hit(HITId=hit)["NumResults"] == 2
    finally:
        client.close()
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
