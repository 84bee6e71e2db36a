"""The state and the rules of match's crowd server: MTurk's requester API over SQLite.

MTurk closed in 2026, so match ships its own crowd server (:mod:`match.crowd.server`).
This module is everything behind its HTTP layer: one :class:`CrowdStore` per data
directory holds HIT types, HITs, assignments, bonuses, notifications, qualifications,
worker blocks and requester funds in ``crowd.sqlite3`` (WAL), and implements

* the **requester side**, :meth:`CrowdStore.call`: one method per MTurk operation
  (``CreateHIT``, ``ListAssignmentsForHIT``, ``SendBonus`` ...), taking and returning
  the JSON shapes of botocore's ``mturk/2017-01-17`` service model, raising
  :class:`MTurkError` where MTurk answers with a ``RequestError``;
* the **worker side**: creating worker accounts (a secret token each, only its hash is
  stored), listing the HITs a worker may accept, accepting, returning and submitting
  assignments (the answer becomes a ``QuestionFormAnswers`` document exactly as MTurk
  returns it), and a worker's notifications and bonuses.

The MTurk rules kept here, each with the MTurk behaviour it copies:

* HIT states Assignable / Unassignable / Reviewable / Reviewing / Disposed are computed
  from the assignments and the clock, never stored, so expiry (``LifetimeInSeconds``,
  ``UpdateExpirationForHIT``), abandonment (``AssignmentDurationInSeconds``) and
  auto-approval (``AutoApprovalDelayInSeconds``) need no background job: every call
  first *advances* the store to the clock's ``now``.
* Money is kept in integer cents. Funds are **reserved when a HIT is created** (reward
  plus MTurk's fee for every assignment: 20 %, 40 % for HITs with 10 or more
  assignments, at least one cent), so ``CreateHIT`` fails with ``InsufficientFunds`` as
  MTurk's does for a prepaid account; the reservation becomes a charge when an
  assignment is approved (explicitly or automatically) and is released when it is
  rejected or when the HIT expires with places nobody took. Bonuses cost 20 % more.
  ``GetAccountBalance`` answers ``AvailableBalance`` (funds less charges less
  reservations) and ``OnHoldBalance`` (the reservations).
* ``UniqueRequestToken`` (24 hours, per requester): a second ``CreateHIT*`` with the same
  token fails with ``AWS.MechanicalTurk.HitAlreadyExists`` and a message that names
  the existing HITId; a second ``SendBonus`` or ``CreateAdditionalAssignmentsForHIT``
  fails with ``AWS.MechanicalTurk.DuplicateRequest``. A retry never makes a second HIT,
  bonus or extension.
* A HIT created with fewer than 10 assignments can't be extended to 10 or more;
  ``DeleteHIT`` only for a Reviewable or Reviewing HIT whose submitted assignments are
  all approved or rejected; ``NotifyWorkers`` takes 1 to 100 workers and fails softly
  (``HardFailure``) for a worker whose work the requester never approved or rejected.

Every requester-visible error message ends with `` (<epoch milliseconds>)`` as MTurk's do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

__all__ = [
    "ANSWER_NAMESPACE",
    "Clock",
    "CrowdStore",
    "MTurkError",
    "WorkerError",
    "WorkerAccount",
    "build_answer_xml",
    "question_external_url",
    "question_frame_height",
    "question_html",
]

Clock = Callable[[], float]
JSON = dict[str, Any]

ANSWER_NAMESPACE = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"
)
_SCHEMA_PREFIX = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/"
_MAX_QUESTION_BYTES = 65535
_TOKEN_TTL = 24 * 3600
_OVERRIDE_WINDOW = 30 * 24 * 3600
_DEFAULT_AUTO_APPROVAL = 30 * 24 * 3600
_MAX_NOTIFY = 100
_DEFAULT_PAGE = 10
_MONEY = re.compile(r"^[0-9]+(\.)?[0-9]{0,2}$")
_WORKER_ID = re.compile(r"^A[A-Z0-9]+$")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Entities can only be declared in a DOCTYPE, and a DOCTYPE only stands before the root element
# (a "<!DOCTYPE html>" inside HTMLContent's CDATA is content, not a declaration).
_DOCTYPE_IN_PROLOG = re.compile(
    r"\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*)*<!DOCTYPE", re.IGNORECASE | re.DOTALL
)
_NOT_YOUR_WORKER = "Cannot notify a worker whose work you never approved or rejected"

# MTurk's system qualification types that this server can evaluate.
LOCALE_QUALIFICATION = "00000000000000000071"
PERCENT_APPROVED_QUALIFICATION = "000000000000000000L0"
NUMBER_APPROVED_QUALIFICATION = "00000000000000000040"
MASTERS_QUALIFICATIONS = frozenset({"2F1QJWKUDD8XADTFD2Q0G6UTO95ALH", "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"})

# Assignment states. Only the last three are visible through the requester API, as on MTurk.
ACCEPTED, RETURNED, ABANDONED = "Accepted", "Returned", "Abandoned"
SUBMITTED, APPROVED, REJECTED = "Submitted", "Approved", "Rejected"
VISIBLE_STATES = (SUBMITTED, APPROVED, REJECTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requesters (
    access_key TEXT PRIMARY KEY, funds_cents INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, requester TEXT NOT NULL, kind TEXT NOT NULL,
    cents INTEGER NOT NULL, reference TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS charges_requester ON charges (requester);
CREATE TABLE IF NOT EXISTS hit_types (
    id TEXT PRIMARY KEY, group_id TEXT NOT NULL, requester TEXT NOT NULL, signature TEXT NOT NULL,
    title TEXT NOT NULL, description TEXT NOT NULL, keywords TEXT, reward_cents INTEGER NOT NULL,
    assignment_duration INTEGER NOT NULL, auto_approval_delay INTEGER NOT NULL,
    qualification_requirements TEXT NOT NULL, created REAL NOT NULL,
    UNIQUE (requester, signature));
CREATE TABLE IF NOT EXISTS hits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, requester TEXT NOT NULL,
    hit_type_id TEXT NOT NULL REFERENCES hit_types (id), question TEXT NOT NULL, annotation TEXT,
    max_assignments INTEGER NOT NULL, initial_max_assignments INTEGER NOT NULL,
    reward_cents INTEGER NOT NULL, fee_cents INTEGER NOT NULL, created REAL NOT NULL,
    expiration REAL NOT NULL, reviewing INTEGER NOT NULL DEFAULT 0,
    disposed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS hits_requester ON hits (requester, disposed);
CREATE TABLE IF NOT EXISTS assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    hit_id TEXT NOT NULL REFERENCES hits (id), worker_id TEXT NOT NULL, status TEXT NOT NULL,
    accept_time REAL NOT NULL, deadline REAL NOT NULL, submit_time REAL, auto_approval_time REAL,
    approval_time REAL, rejection_time REAL, answer TEXT, feedback TEXT);
CREATE INDEX IF NOT EXISTS assignments_hit ON assignments (hit_id, status);
CREATE INDEX IF NOT EXISTS assignments_worker ON assignments (worker_id, status);
CREATE INDEX IF NOT EXISTS assignments_status ON assignments (status);
CREATE TABLE IF NOT EXISTS request_tokens (
    requester TEXT NOT NULL, family TEXT NOT NULL, token TEXT NOT NULL, result TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (requester, family, token));
CREATE TABLE IF NOT EXISTS bonuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, requester TEXT NOT NULL, worker_id TEXT NOT NULL,
    assignment_id TEXT NOT NULL, hit_id TEXT NOT NULL, cents INTEGER NOT NULL, reason TEXT NOT NULL,
    time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, requester TEXT NOT NULL, worker_id TEXT NOT NULL,
    subject TEXT NOT NULL, message TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, token_hash TEXT UNIQUE, name TEXT, locale TEXT NOT NULL,
    simulated INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS qualification_types (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    keywords TEXT, status TEXT NOT NULL, retry_delay INTEGER, auto_granted INTEGER NOT NULL,
    auto_granted_value INTEGER, created REAL NOT NULL, UNIQUE (requester, name));
CREATE TABLE IF NOT EXISTS qualifications (
    qualification_type_id TEXT NOT NULL, worker_id TEXT NOT NULL, value INTEGER NOT NULL,
    granted REAL NOT NULL, PRIMARY KEY (qualification_type_id, worker_id));
CREATE TABLE IF NOT EXISTS worker_blocks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, requester TEXT NOT NULL, worker_id TEXT NOT NULL,
    reason TEXT NOT NULL, time REAL NOT NULL, UNIQUE (requester, worker_id));
"""

# One HIT with its type and its assignment counts: every HIT read goes through this.
_HIT_SELECT = """
SELECT h.*, t.group_id, t.title, t.description, t.keywords, t.assignment_duration,
       t.auto_approval_delay, t.qualification_requirements,
       COALESCE(SUM(a.status = 'Accepted'), 0) AS n_accepted,
       COALESCE(SUM(a.status = 'Submitted'), 0) AS n_submitted,
       COALESCE(SUM(a.status = 'Approved'), 0) AS n_approved,
       COALESCE(SUM(a.status = 'Rejected'), 0) AS n_rejected
FROM hits h JOIN hit_types t ON t.id = h.hit_type_id
LEFT JOIN assignments a ON a.hit_id = h.id
"""


class MTurkError(Exception):
    """An error answered the way MTurk does: ``RequestError`` (the caller's fault, HTTP 400)
    or ``ServiceFault`` (ours), with a ``TurkErrorCode``."""

    def __init__(self, message: str, turk_code: str = "ParameterValidationError", *, fault: bool = False):
        super().__init__(message)
        self.message = message
        self.turk_code = turk_code
        self.fault = fault

    @property
    def type_name(self) -> str:
        """The ``__type`` of the JSON error body, which botocore turns into the exception class."""
        return "ServiceFault" if self.fault else "RequestError"


class WorkerError(Exception):
    """A worker-side action refused (HIT gone, not qualified, blocked ...); the message is shown."""


@dataclass(frozen=True)
class WorkerAccount:
    """A worker created by :meth:`CrowdStore.create_worker`. ``token`` is shown once, never stored."""

    worker_id: str
    token: str | None


@dataclass(frozen=True)
class _Call:
    """One requester call: who, when, and its JSON parameters, with validating getters."""

    requester: str
    now: float
    params: Mapping[str, Any]

    def error(self, message: str, code: str = "ParameterValidationError") -> MTurkError:
        return MTurkError(f"{message} ({int(self.now * 1000)})", code)

    def text(self, name: str, *, max_len: int | None = None) -> str:
        value = self.opt_text(name, max_len=max_len)
        if value is None:
            raise self.error(f"Value null at '{name}' failed to satisfy constraint: Member must not be null")
        return value

    def opt_text(self, name: str, *, max_len: int | None = None) -> str | None:
        value = self.params.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"The value of {name} must be a string.")
        if max_len is not None and len(value) > max_len:
            raise self.error(f"The value of {name} is longer than {max_len} characters.")
        return value

    def integer(self, name: str, *, default: int | None = None, lo: int, hi: int) -> int:
        value = self.params.get(name, default)
        if value is None:
            raise self.error(f"Value null at '{name}' failed to satisfy constraint: Member must not be null")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"The value of {name} must be an integer.")
        if not lo <= value <= hi:
            raise self.error(f"The value {value} for {name} is invalid: it must be between {lo} and {hi}.")
        return value

    def flag(self, name: str) -> bool:
        return bool(self.params.get(name, False))

    def money(self, name: str) -> int:
        return _parse_money(self.text(name), name, self)

    def worker_id(self, name: str = "WorkerId") -> str:
        value = self.text(name, max_len=64)
        if not _WORKER_ID.match(value):
            raise self.error(f"{value} is not a valid worker ID.", "AWS.MechanicalTurk.InvalidWorkerId")
        return value

    def page(self) -> tuple[int, int]:
        """(MaxResults, the sequence number after which the page starts) from the pagination fields."""
        size = self.integer("MaxResults", default=_DEFAULT_PAGE, lo=1, hi=100)
        token = self.opt_text("NextToken", max_len=255)
        if token is None:
            return size, 0
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))["after"]
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
            raise self.error("The pagination token is invalid.") from None
        if not isinstance(after, int):
            raise self.error("The pagination token is invalid.")
        return size, after


Operation = Callable[["CrowdStore", _Call], JSON]
_OPERATIONS: dict[str, Operation] = {}


def _operation(name: str) -> Callable[[Operation], Operation]:
    """Register a :class:`CrowdStore` method as the MTurk operation ``name``."""

    def register(method: Operation) -> Operation:
        _OPERATIONS[name] = method
        return method

    return register


def _parse_money(value: str, name: str, call: _Call) -> int:
    if not _MONEY.match(value):
        raise call.error(f"The value {value!r} for {name} is not a valid amount of US dollars.")
    whole, _, cents = value.partition(".")
    return int(whole) * 100 + int((cents + "00")[:2])


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _fee(cents: int, rate_percent: int) -> int:
    """MTurk's commission on ``cents``: ``rate_percent`` rounded half up, at least one cent."""
    if cents <= 0:
        return 0
    return max(1, (cents * rate_percent + 50) // 100)


def _assignment_fee(reward_cents: int, max_assignments: int) -> int:
    return _fee(reward_cents, 40 if max_assignments >= 10 else 20)


def _new_id(first: str = "3", length: int = 30) -> str:
    return first + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - 1))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _encode_page(after: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode("ascii")).decode("ascii")


def _xml_text(value: str) -> str:
    """``value`` as XML character data in an ASCII document (non-ASCII as character references)."""
    return escape(_XML_INVALID.sub("", value)).encode("ascii", "xmlcharrefreplace").decode("ascii")


def build_answer_xml(fields: Sequence[tuple[str, str]]) -> str:
    """The ``QuestionFormAnswers`` document MTurk returns for a submitted HTML form.

    One ``Answer`` per field name in the order the names first appear, values of a
    repeated name (checkboxes) joined with ``|``; ``assignmentId`` is left out, as MTurk does.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in fields:
        if name != "assignmentId":
            grouped.setdefault(name, []).append(value)
    answers = "".join(
        f"<Answer><QuestionIdentifier>{_xml_text(name)}</QuestionIdentifier>"
        f"<FreeText>{_xml_text('|'.join(values))}</FreeText></Answer>"
        for name, values in grouped.items()
    )
    return (
        f'<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="{ANSWER_NAMESPACE}">'
        f"{answers}</QuestionFormAnswers>"
    )


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _parse_question(xml: str) -> ElementTree.Element:
    """Parse a Question document; ``ValueError`` with the reason when MTurk would refuse it."""
    if len(xml.encode("utf-8")) > _MAX_QUESTION_BYTES:
        raise ValueError(f"the Question is larger than {_MAX_QUESTION_BYTES} bytes")
    if _DOCTYPE_IN_PROLOG.match(xml):
        raise ValueError("a Question may not have a document type declaration")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ValueError(f"the Question is not well-formed XML: {exc}") from None
    namespace, kind = _split_tag(root.tag)
    if kind not in ("HTMLQuestion", "ExternalQuestion"):
        raise ValueError(f"a Question must be an HTMLQuestion or an ExternalQuestion, not {kind}")
    if not (namespace.startswith(_SCHEMA_PREFIX) and namespace.endswith(f"/{kind}.xsd")):
        raise ValueError(f"the namespace of {kind} must be its MTurk schema URL, not {namespace!r}")
    children = {_split_tag(child.tag)[1]: (child.text or "").strip() for child in root}
    content = "HTMLContent" if kind == "HTMLQuestion" else "ExternalURL"
    if not children.get(content):
        raise ValueError(f"{kind} needs a non-empty {content}")
    height = children.get("FrameHeight", "")
    if not height.isdigit():
        raise ValueError(f"{kind} needs a FrameHeight in pixels (0 for the whole page)")
    if kind == "ExternalQuestion" and not children[content].startswith("https://"):
        raise ValueError("an ExternalURL must be an https:// URL")
    return root


def _question_part(question: str, kind: str, part: str) -> str | None:
    root = ElementTree.fromstring(question)
    if _split_tag(root.tag)[1] != kind:
        return None
    for child in root:
        if _split_tag(child.tag)[1] == part:
            return (child.text or "").strip() if part == "ExternalURL" else child.text or ""
    return None


def question_html(question: str) -> str | None:
    """The HTML document inside an HTMLQuestion (its HTMLContent), or None for another kind."""
    return _question_part(question, "HTMLQuestion", "HTMLContent")


def question_external_url(question: str) -> str | None:
    """The ExternalURL of an ExternalQuestion, or None for another kind."""
    return _question_part(question, "ExternalQuestion", "ExternalURL")


def question_frame_height(question: str) -> int:
    """The FrameHeight (pixels) of an HTMLQuestion or ExternalQuestion; 0 means "the whole page"."""
    for kind in ("HTMLQuestion", "ExternalQuestion"):
        height = _question_part(question, kind, "FrameHeight")
        if height is not None:
            return int(height.strip() or 0)
    return 0


class CrowdStore:
    """The crowd server's durable state (``<data_dir>/crowd.sqlite3``) and MTurk's rules.

    Thread-safe: one connection, every call in one ``BEGIN IMMEDIATE`` transaction under
    a lock (so two processes on one directory are safe too). ``clock`` gives epoch
    seconds; tests pass a fake one. Each requester (an AWS access key id) starts with
    ``initial_balance`` US dollars.
    """

    def __init__(self, data_dir: str | Path, *, clock: Clock = time.time, initial_balance: str = "10000.00"):
        self.path = Path(data_dir) / "crowd.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._initial_cents = _parse_money(initial_balance, "initial_balance", _Call("", 0, {}))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def now(self) -> float:
        """The store's clock, in epoch seconds."""
        return self._clock()

    @contextmanager
    def _transaction(self) -> Iterator[float]:
        """Run a block in one write transaction, after advancing the state to now; yields now."""
        with self._lock:
            now = self._clock()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._advance(now)
                yield now
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _advance(self, now: float) -> None:
        """Abandon assignments past their deadline and auto-approve those past their delay."""
        self._db.execute(
            "UPDATE assignments SET status = ? WHERE status = ? AND deadline <= ?", (ABANDONED, ACCEPTED, now)
        )
        due = self._db.execute(
            "SELECT a.id, a.auto_approval_time, h.requester, h.reward_cents, h.fee_cents "
            "FROM assignments a JOIN hits h ON h.id = a.hit_id "
            "WHERE a.status = ? AND a.auto_approval_time <= ?",
            (SUBMITTED, now),
        ).fetchall()
        for row in due:
            self._charge_approval(row, row["auto_approval_time"])

    def _charge_approval(self, row: sqlite3.Row, when: float) -> None:
        """Mark an assignment approved and charge its reward and fee to its requester."""
        self._db.execute(
            "UPDATE assignments SET status = ?, approval_time = ?, rejection_time = NULL WHERE id = ?",
            (APPROVED, when, row["id"]),
        )
        self._db.executemany(
            "INSERT INTO charges (requester, kind, cents, reference, time) VALUES (?, ?, ?, ?, ?)",
            [
                (row["requester"], "reward", row["reward_cents"], row["id"], when),
                (row["requester"], "fee", row["fee_cents"], row["id"], when),
            ],
        )

    # -- requester side -------------------------------------------------------------------

    def call(self, requester: str, operation: str, params: Mapping[str, Any]) -> JSON:
        """Run the MTurk ``operation`` for ``requester`` (an access key id); its JSON response.

        Raises :class:`MTurkError` as MTurk would, and ``KeyError`` for an operation this
        server does not implement.
        """
        method = _OPERATIONS[operation]
        with self._transaction() as now:
            self._ensure_requester(requester, now)
            return method(self, _Call(requester, now, params))

    @staticmethod
    def operations() -> list[str]:
        """The MTurk operations this server implements."""
        return sorted(_OPERATIONS)

    def _ensure_requester(self, requester: str, now: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO requesters (access_key, funds_cents, created) VALUES (?, ?, ?)",
            (requester, self._initial_cents, now),
        )

    def _funds(self, requester: str, now: float) -> tuple[int, int]:
        """(available, on hold) cents: funds less charges less reservations, and the reservations."""
        funds = self._db.execute(
            "SELECT funds_cents FROM requesters WHERE access_key = ?", (requester,)
        ).fetchone()["funds_cents"]
        spent = self._db.execute(
            "SELECT COALESCE(SUM(cents), 0) FROM charges WHERE requester = ?", (requester,)
        ).fetchone()[0]
        held = self._db.execute(
            """
            SELECT COALESCE(SUM((h.reward_cents + h.fee_cents) * CASE
                WHEN h.expiration <= :now THEN
                    (SELECT COUNT(*) FROM assignments a WHERE a.hit_id = h.id AND a.status IN (:acc, :sub))
                ELSE h.max_assignments -
                    (SELECT COUNT(*) FROM assignments a WHERE a.hit_id = h.id AND a.status IN (:app, :rej))
                END), 0)
            FROM hits h WHERE h.requester = :requester AND h.disposed = 0
            """,
            {
                "now": now,
                "requester": requester,
                "acc": ACCEPTED,
                "sub": SUBMITTED,
                "app": APPROVED,
                "rej": REJECTED,
            },
        ).fetchone()[0]
        return funds - spent - held, held

    def _require_funds(self, call: _Call, cents: int) -> None:
        if self._funds(call.requester, call.now)[0] < cents:
            raise call.error(
                f"This Requester has insufficient funds in their account to complete this transaction "
                f"(${_money(cents)} needed).",
                "AWS.MechanicalTurk.InsufficientFunds",
            )

    def set_balance(self, requester: str, amount: str) -> None:
        """Set ``requester``'s AvailableBalance to ``amount`` dollars (what an admin's top-up does)."""
        with self._transaction() as now:
            self._ensure_requester(requester, now)
            cents = _parse_money(amount, "amount", _Call(requester, now, {}))
            available, _ = self._funds(requester, now)
            self._db.execute(
                "UPDATE requesters SET funds_cents = funds_cents + ? WHERE access_key = ?",
                (cents - available, requester),
            )

    def _claim_token(self, call: _Call, family: str, result: str) -> None:
        """Record ``call``'s UniqueRequestToken; raise MTurk's duplicate error if it was seen."""
        token = call.opt_text("UniqueRequestToken", max_len=64)
        if token is None:
            return
        self._db.execute("DELETE FROM request_tokens WHERE created <= ?", (call.now - _TOKEN_TTL,))
        seen = self._db.execute(
            "SELECT result FROM request_tokens WHERE requester = ? AND family = ? AND token = ?",
            (call.requester, family, token),
        ).fetchone()
        if seen is not None:
            if family == "CreateHIT":
                raise call.error(
                    f'The HIT with ID "{seen["result"]}" already exists for UniqueRequestToken "{token}".',
                    "AWS.MechanicalTurk.HitAlreadyExists",
                )
            raise call.error(
                f'The idempotency token "{token}" has already been processed.',
                "AWS.MechanicalTurk.DuplicateRequest",
            )
        self._db.execute(
            "INSERT INTO request_tokens (requester, family, token, result, created) VALUES (?, ?, ?, ?, ?)",
            (call.requester, family, token, result, call.now),
        )

    # HIT types and HITs

    def _hit_type_id(self, call: _Call) -> str:
        """The HITTypeId for the HIT type fields of ``call``: MTurk gives equal fields one id."""
        fields = {
            "Title": call.text("Title", max_len=128),
            "Description": call.text("Description", max_len=2000),
            "Keywords": call.opt_text("Keywords", max_len=1000),
            "Reward": call.money("Reward"),
            "AssignmentDurationInSeconds": call.integer("AssignmentDurationInSeconds", lo=30, hi=31536000),
            "AutoApprovalDelayInSeconds": call.integer(
                "AutoApprovalDelayInSeconds", default=_DEFAULT_AUTO_APPROVAL, lo=0, hi=_DEFAULT_AUTO_APPROVAL
            ),
            "QualificationRequirements": self._qualification_requirements(call),
        }
        signature = json.dumps(fields, sort_keys=True)
        row = self._db.execute(
            "SELECT id FROM hit_types WHERE requester = ? AND signature = ?", (call.requester, signature)
        ).fetchone()
        if row is not None:
            return str(row["id"])
        hit_type_id = _new_id()
        self._db.execute(
            "INSERT INTO hit_types (id, group_id, requester, signature, title, description, keywords, "
            "reward_cents, assignment_duration, auto_approval_delay, qualification_requirements, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                hit_type_id,
                _new_id(),
                call.requester,
                signature,
                fields["Title"],
                fields["Description"],
                fields["Keywords"],
                fields["Reward"],
                fields["AssignmentDurationInSeconds"],
                fields["AutoApprovalDelayInSeconds"],
                json.dumps(fields["QualificationRequirements"]),
                call.now,
            ),
        )
        return hit_type_id

    def _qualification_requirements(self, call: _Call) -> list[JSON]:
        requirements = call.params.get("QualificationRequirements") or []
        if not isinstance(requirements, list) or len(requirements) > 10:
            raise call.error("A HIT can have between zero and ten Qualification requirements.")
        for requirement in requirements:
            type_id = requirement.get("QualificationTypeId") if isinstance(requirement, dict) else None
            if not isinstance(type_id, str) or "Comparator" not in requirement:
                raise call.error("A QualificationRequirement needs a QualificationTypeId and a Comparator.")
            system = {LOCALE_QUALIFICATION, PERCENT_APPROVED_QUALIFICATION, NUMBER_APPROVED_QUALIFICATION}
            if (
                type_id not in system | MASTERS_QUALIFICATIONS
                and self._db.execute("SELECT 1 FROM qualification_types WHERE id = ?", (type_id,)).fetchone()
                is None
            ):
                raise call.error(
                    f"QualificationType {type_id} does not exist.",
                    "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
                )
        return list(requirements)

    @_operation("CreateHITType")
    def _create_hit_type(self, call: _Call) -> JSON:
        return {"HITTypeId": self._hit_type_id(call)}

    @_operation("CreateHIT")
    def _create_hit(self, call: _Call) -> JSON:
        return self._new_hit(call, self._hit_type_id(call))

    @_operation("CreateHITWithHITType")
    def _create_hit_with_hit_type(self, call: _Call) -> JSON:
        hit_type_id = call.text("HITTypeId")
        if (
            self._db.execute(
                "SELECT 1 FROM hit_types WHERE id = ? AND requester = ?", (hit_type_id, call.requester)
            ).fetchone()
            is None
        ):
            raise call.error(
                f"HITType {hit_type_id} does not exist.", "AWS.MechanicalTurk.HITTypeDoesNotExist"
            )
        return self._new_hit(call, hit_type_id)

    def _new_hit(self, call: _Call, hit_type_id: str) -> JSON:
        hit_id = _new_id()
        self._claim_token(call, "CreateHIT", hit_id)  # first: a retry is refused, whatever else it says
        for unsupported in ("HITLayoutId", "AssignmentReviewPolicy", "HITReviewPolicy"):
            if call.params.get(unsupported) is not None:
                raise call.error(f"{unsupported} is not supported by this server; send a Question.")
        question = call.text("Question")
        try:
            _parse_question(question)
        except ValueError as exc:
            raise call.error(
                f"There was an error parsing the XML question or answer data in your request: {exc}.",
                "AWS.MechanicalTurk.XMLParseError",
            ) from None
        lifetime = call.integer("LifetimeInSeconds", lo=30, hi=31536000)
        max_assignments = call.integer("MaxAssignments", default=1, lo=1, hi=1000000)
        annotation = call.opt_text("RequesterAnnotation", max_len=255)
        reward = self._db.execute(
            "SELECT reward_cents FROM hit_types WHERE id = ?", (hit_type_id,)
        ).fetchone()[0]
        fee = _assignment_fee(reward, max_assignments)
        self._require_funds(call, (reward + fee) * max_assignments)
        self._db.execute(
            "INSERT INTO hits (id, requester, hit_type_id, question, annotation, max_assignments, "
            "initial_max_assignments, reward_cents, fee_cents, created, expiration) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                hit_id,
                call.requester,
                hit_type_id,
                question,
                annotation,
                max_assignments,
                max_assignments,
                reward,
                fee,
                call.now,
                call.now + lifetime,
            ),
        )
        return {"HIT": self._hit_json(self._hit_row(call, hit_id), call.now)}

    def _hit_row(self, call: _Call, hit_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            _HIT_SELECT + " WHERE h.id = ? AND h.requester = ? GROUP BY h.seq", (hit_id, call.requester)
        ).fetchone()
        if row is None:
            raise call.error(f"Hit {hit_id} does not exist.", "AWS.MechanicalTurk.HITDoesNotExist")
        return row

    @staticmethod
    def _hit_status(row: sqlite3.Row, now: float) -> str:
        if row["disposed"]:
            return "Disposed"
        if row["reviewing"]:
            return "Reviewing"
        taken = row["n_accepted"] + row["n_submitted"] + row["n_approved"] + row["n_rejected"]
        if now < row["expiration"] and taken < row["max_assignments"]:
            return "Assignable"
        return "Unassignable" if row["n_accepted"] else "Reviewable"

    def _hit_json(self, row: sqlite3.Row, now: float) -> JSON:
        taken = row["n_accepted"] + row["n_submitted"] + row["n_approved"] + row["n_rejected"]
        hit: JSON = {
            "HITId": row["id"],
            "HITTypeId": row["hit_type_id"],
            "HITGroupId": row["group_id"],
            "CreationTime": row["created"],
            "Title": row["title"],
            "Description": row["description"],
            "Question": row["question"],
            "HITStatus": self._hit_status(row, now),
            "MaxAssignments": row["max_assignments"],
            "Reward": _money(row["reward_cents"]),
            "AutoApprovalDelayInSeconds": row["auto_approval_delay"],
            "Expiration": row["expiration"],
            "AssignmentDurationInSeconds": row["assignment_duration"],
            "QualificationRequirements": json.loads(row["qualification_requirements"]),
            "HITReviewStatus": "NotReviewed",
            "NumberOfAssignmentsPending": row["n_accepted"],
            "NumberOfAssignmentsAvailable": max(0, row["max_assignments"] - taken),
            "NumberOfAssignmentsCompleted": row["n_approved"] + row["n_rejected"],
        }
        if row["keywords"] is not None:
            hit["Keywords"] = row["keywords"]
        if row["annotation"] is not None:
            hit["RequesterAnnotation"] = row["annotation"]
        return hit

    @_operation("GetHIT")
    def _get_hit(self, call: _Call) -> JSON:
        return {"HIT": self._hit_json(self._hit_row(call, call.text("HITId")), call.now)}

    def _hit_page(
        self, call: _Call, keep: Callable[[sqlite3.Row], bool], where: str = "", args: tuple[Any, ...] = ()
    ) -> JSON:
        size, after = call.page()
        rows = self._db.execute(
            _HIT_SELECT + f" WHERE h.requester = ? AND h.disposed = 0 AND h.seq > ? {where} "
            "GROUP BY h.seq ORDER BY h.seq",
            (call.requester, after, *args),
        )
        page: list[sqlite3.Row] = []
        more = False
        for row in rows:
            if keep(row):
                if len(page) == size:
                    more = True
                    break
                page.append(row)
        response: JSON = {"NumResults": len(page), "HITs": [self._hit_json(row, call.now) for row in page]}
        if more:
            response["NextToken"] = _encode_page(page[-1]["seq"])
        return response

    @_operation("ListHITs")
    def _list_hits(self, call: _Call) -> JSON:
        return self._hit_page(call, lambda row: True)

    @_operation("ListReviewableHITs")
    def _list_reviewable_hits(self, call: _Call) -> JSON:
        status = call.opt_text("Status") or "Reviewable"
        if status not in ("Reviewable", "Reviewing"):
            raise call.error("Status must be Reviewable or Reviewing.")
        hit_type_id = call.opt_text("HITTypeId")
        where, args = ("AND h.hit_type_id = ?", (hit_type_id,)) if hit_type_id else ("", ())
        return self._hit_page(call, lambda row: self._hit_status(row, call.now) == status, where, args)

    def _wrong_state(self, call: _Call, what: str, state: str, allowed: str, code: str) -> MTurkError:
        return call.error(
            f"This {what} is currently in the state '{state}'.  "
            "This operation can be called with a status of: "
            f"{allowed}",
            code,
        )

    @_operation("UpdateHITReviewStatus")
    def _update_hit_review_status(self, call: _Call) -> JSON:
        row = self._hit_row(call, call.text("HITId"))
        status = self._hit_status(row, call.now)
        revert = call.flag("Revert")
        wanted = "Reviewing" if revert else "Reviewable"
        if status != wanted:
            raise self._wrong_state(call, "HIT", status, wanted, "AWS.MechanicalTurk.InvalidHITState")
        self._db.execute("UPDATE hits SET reviewing = ? WHERE id = ?", (0 if revert else 1, row["id"]))
        return {}

    @_operation("UpdateExpirationForHIT")
    def _update_expiration_for_hit(self, call: _Call) -> JSON:
        row = self._hit_row(call, call.text("HITId"))
        if row["disposed"]:
            raise self._wrong_state(
                call,
                "HIT",
                "Disposed",
                "Assignable, Unassignable, Reviewable, Reviewing",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        expire_at = call.params.get("ExpireAt")
        if isinstance(expire_at, str):
            try:
                expire_at = float(expire_at)
            except ValueError:
                raise call.error("ExpireAt must be a timestamp.") from None
        if not isinstance(expire_at, int | float) or isinstance(expire_at, bool):
            raise call.error("ExpireAt must be a timestamp.")
        expiration = max(float(expire_at), call.now)
        if expiration > call.now:
            # Extending a HIT makes it available again, so new funds are reserved for its open places.
            self._db.execute(
                "UPDATE hits SET expiration = ?, reviewing = 0 WHERE id = ?", (expiration, row["id"])
            )
            self._require_funds(call, 0)
        else:
            self._db.execute("UPDATE hits SET expiration = ? WHERE id = ?", (expiration, row["id"]))
        return {}

    @_operation("CreateAdditionalAssignmentsForHIT")
    def _create_additional_assignments(self, call: _Call) -> JSON:
        row = self._hit_row(call, call.text("HITId"))
        self._claim_token(call, "CreateAdditionalAssignmentsForHIT", row["id"])
        extra = call.integer("NumberOfAdditionalAssignments", lo=1, hi=1000000)
        if row["disposed"]:
            raise self._wrong_state(
                call,
                "HIT",
                "Disposed",
                "Assignable, Unassignable, Reviewable, Reviewing",
                "AWS.MechanicalTurk.InvalidHITState",
            )
        total = row["max_assignments"] + extra
        if row["initial_max_assignments"] < 10 <= total:
            raise call.error(
                f"HIT {row['id']} was created with fewer than 10 assignments and cannot be extended to "
                f"{total} (10 or more) assignments.",
                "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease",
            )
        if call.now < row["expiration"]:
            self._require_funds(call, (row["reward_cents"] + row["fee_cents"]) * extra)
        self._db.execute(
            "UPDATE hits SET max_assignments = ?, reviewing = 0 WHERE id = ?", (total, row["id"])
        )
        return {}

    @_operation("DeleteHIT")
    def _delete_hit(self, call: _Call) -> JSON:
        row = self._hit_row(call, call.text("HITId"))
        status = self._hit_status(row, call.now)
        if status not in ("Reviewable", "Reviewing") or row["n_submitted"]:
            detail = (
                status
                if status != "Reviewable"
                else "Reviewable, with submitted assignments not yet reviewed"
            )
            raise self._wrong_state(
                call, "HIT", detail, "Reviewing, Reviewable", "AWS.MechanicalTurk.InvalidHITState"
            )
        self._db.execute("UPDATE hits SET disposed = 1 WHERE id = ?", (row["id"],))
        return {}

    # assignments

    def _assignment_row(self, call: _Call, assignment_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT a.*, h.requester, h.reward_cents, h.fee_cents, h.disposed FROM assignments a "
            "JOIN hits h ON h.id = a.hit_id WHERE a.id = ? AND h.requester = ? AND a.status IN (?, ?, ?)",
            (assignment_id, call.requester, *VISIBLE_STATES),
        ).fetchone()
        if row is None:
            raise call.error(
                f"Assignment {assignment_id} does not exist.", "AWS.MechanicalTurk.AssignmentDoesNotExist"
            )
        return row

    @staticmethod
    def _assignment_json(row: sqlite3.Row) -> JSON:
        assignment: JSON = {
            "AssignmentId": row["id"],
            "WorkerId": row["worker_id"],
            "HITId": row["hit_id"],
            "AssignmentStatus": row["status"],
            "AutoApprovalTime": row["auto_approval_time"],
            "AcceptTime": row["accept_time"],
            "SubmitTime": row["submit_time"],
            "Deadline": row["deadline"],
            "Answer": row["answer"],
        }
        for key, column in (
            ("ApprovalTime", "approval_time"),
            ("RejectionTime", "rejection_time"),
            ("RequesterFeedback", "feedback"),
        ):
            if row[column] is not None:
                assignment[key] = row[column]
        return assignment

    @_operation("GetAssignment")
    def _get_assignment(self, call: _Call) -> JSON:
        row = self._assignment_row(call, call.text("AssignmentId"))
        return {
            "Assignment": self._assignment_json(row),
            "HIT": self._hit_json(self._hit_row(call, row["hit_id"]), call.now),
        }

    @_operation("ListAssignmentsForHIT")
    def _list_assignments_for_hit(self, call: _Call) -> JSON:
        hit = self._hit_row(call, call.text("HITId"))
        statuses = call.params.get("AssignmentStatuses") or list(VISIBLE_STATES)
        if not isinstance(statuses, list) or not set(statuses) <= set(VISIBLE_STATES):
            raise call.error("AssignmentStatuses may only hold Submitted, Approved and Rejected.")
        size, after = call.page()
        marks = ", ".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT * FROM assignments WHERE hit_id = ? AND seq > ? AND status IN ({marks}) "
            "ORDER BY seq LIMIT ?",
            (hit["id"], after, *statuses, size + 1),
        ).fetchall()
        response: JSON = {
            "NumResults": min(len(rows), size),
            "Assignments": [self._assignment_json(row) for row in rows[:size]],
        }
        if len(rows) > size:
            response["NextToken"] = _encode_page(rows[size - 1]["seq"])
        return response

    @_operation("ApproveAssignment")
    def _approve_assignment(self, call: _Call) -> JSON:
        row = self._assignment_row(call, call.text("AssignmentId"))
        feedback = call.opt_text("RequesterFeedback", max_len=1024)
        if row["status"] == REJECTED and call.flag("OverrideRejection"):
            if row["disposed"] or call.now - row["submit_time"] > _OVERRIDE_WINDOW:
                raise call.error(
                    "A rejection can only be overridden within 30 days of submission and before the HIT is "
                    "deleted.",
                    "AWS.MechanicalTurk.InvalidAssignmentState",
                )
            self._require_funds(call, row["reward_cents"] + row["fee_cents"])
        elif row["status"] != SUBMITTED:
            raise self._wrong_state(
                call, "assignment", row["status"], SUBMITTED, "AWS.MechanicalTurk.InvalidAssignmentState"
            )
        self._charge_approval(row, call.now)
        if feedback is not None:
            self._db.execute("UPDATE assignments SET feedback = ? WHERE id = ?", (feedback, row["id"]))
        return {}

    @_operation("RejectAssignment")
    def _reject_assignment(self, call: _Call) -> JSON:
        row = self._assignment_row(call, call.text("AssignmentId"))
        feedback = call.text("RequesterFeedback", max_len=1024)
        if row["status"] != SUBMITTED:
            raise self._wrong_state(
                call, "assignment", row["status"], SUBMITTED, "AWS.MechanicalTurk.InvalidAssignmentState"
            )
        self._db.execute(
            "UPDATE assignments SET status = ?, rejection_time = ?, feedback = ? WHERE id = ?",
            (REJECTED, call.now, feedback, row["id"]),
        )
        return {}

    # bonuses and notifications

    @_operation("SendBonus")
    def _send_bonus(self, call: _Call) -> JSON:
        worker_id = call.worker_id()
        row = self._assignment_row(call, call.text("AssignmentId"))
        self._claim_token(call, "SendBonus", row["id"])
        cents = call.money("BonusAmount")
        reason = call.text("Reason", max_len=4096)
        if row["worker_id"] != worker_id:
            raise call.error(
                f"Assignment {row['id']} was not done by worker {worker_id}.",
                "AWS.MechanicalTurk.InvalidAssignmentState",
            )
        if cents <= 0:
            raise call.error("BonusAmount must be more than 0.00.")
        fee = _fee(cents, 20)
        self._require_funds(call, cents + fee)
        self._db.execute(
            "INSERT INTO bonuses (requester, worker_id, assignment_id, hit_id, cents, reason, time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (call.requester, worker_id, row["id"], row["hit_id"], cents, reason, call.now),
        )
        self._db.executemany(
            "INSERT INTO charges (requester, kind, cents, reference, time) VALUES (?, ?, ?, ?, ?)",
            [
                (call.requester, "bonus", cents, row["id"], call.now),
                (call.requester, "bonus_fee", fee, row["id"], call.now),
            ],
        )
        return {}

    @_operation("ListBonusPayments")
    def _list_bonus_payments(self, call: _Call) -> JSON:
        hit_id, assignment_id = call.opt_text("HITId"), call.opt_text("AssignmentId")
        if (hit_id is None) == (assignment_id is None):
            raise call.error("Specify exactly one of HITId and AssignmentId.")
        size, after = call.page()
        column, value = ("hit_id", hit_id) if hit_id is not None else ("assignment_id", assignment_id)
        rows = self._db.execute(
            f"SELECT * FROM bonuses WHERE requester = ? AND {column} = ? AND seq > ? ORDER BY seq LIMIT ?",
            (call.requester, value, after, size + 1),
        ).fetchall()
        response: JSON = {
            "NumResults": min(len(rows), size),
            "BonusPayments": [
                {
                    "WorkerId": row["worker_id"],
                    "BonusAmount": _money(row["cents"]),
                    "AssignmentId": row["assignment_id"],
                    "Reason": row["reason"],
                    "GrantTime": row["time"],
                }
                for row in rows[:size]
            ],
        }
        if len(rows) > size:
            response["NextToken"] = _encode_page(rows[size - 1]["seq"])
        return response

    @_operation("NotifyWorkers")
    def _notify_workers(self, call: _Call) -> JSON:
        subject = call.text("Subject", max_len=200)
        message = call.text("MessageText", max_len=4096)
        worker_ids = call.params.get("WorkerIds")
        if not isinstance(worker_ids, list) or not 1 <= len(worker_ids) <= _MAX_NOTIFY:
            raise call.error(f"WorkerIds must hold between 1 and {_MAX_NOTIFY} worker IDs.")
        failures: list[JSON] = []
        for worker_id in dict.fromkeys(worker_ids):
            worked = (
                isinstance(worker_id, str)
                and self._db.execute(
                    "SELECT 1 FROM assignments a JOIN hits h ON h.id = a.hit_id "
                    "WHERE a.worker_id = ? AND h.requester = ? AND a.status IN (?, ?) LIMIT 1",
                    (worker_id, call.requester, APPROVED, REJECTED),
                ).fetchone()
            )
            if not worked:
                failures.append(
                    {
                        "NotifyWorkersFailureCode": "HardFailure",
                        "NotifyWorkersFailureMessage": _NOT_YOUR_WORKER,
                        "WorkerId": str(worker_id),
                    }
                )
                continue
            self._db.execute(
                "INSERT INTO notifications (requester, worker_id, subject, message, time) "
                "VALUES (?, ?, ?, ?, ?)",
                (call.requester, worker_id, subject, message, call.now),
            )
        return {"NotifyWorkersFailureStatuses": failures}

    @_operation("GetAccountBalance")
    def _get_account_balance(self, call: _Call) -> JSON:
        available, held = self._funds(call.requester, call.now)
        return {"AvailableBalance": _money(max(available, 0)), "OnHoldBalance": _money(held)}

    # qualifications and blocks

    @_operation("CreateQualificationType")
    def _create_qualification_type(self, call: _Call) -> JSON:
        name = call.text("Name", max_len=256)
        description = call.text("Description", max_len=2000)
        keywords = call.opt_text("Keywords", max_len=1000)
        status = call.text("QualificationTypeStatus")
        if status not in ("Active", "Inactive"):
            raise call.error("QualificationTypeStatus must be Active or Inactive.")
        if call.params.get("Test") is not None:
            raise call.error("Qualification tests are not supported by this server.")
        retry = call.params.get("RetryDelayInSeconds")
        auto_granted = call.flag("AutoGranted")
        auto_value = (
            call.integer("AutoGrantedValue", default=1, lo=-(2**31), hi=2**31 - 1) if auto_granted else None
        )
        if self._db.execute(
            "SELECT 1 FROM qualification_types WHERE requester = ? AND name = ?", (call.requester, name)
        ).fetchone():
            raise call.error(
                f"You have already created a QualificationType with the name {name!r}; names must be unique.",
                "AWS.MechanicalTurk.QualificationTypeAlreadyExists",
            )
        type_id = _new_id()
        self._db.execute(
            "INSERT INTO qualification_types (id, requester, name, description, keywords, status, "
            "retry_delay, "
            "auto_granted, auto_granted_value, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                type_id,
                call.requester,
                name,
                description,
                keywords,
                status,
                retry,
                int(auto_granted),
                auto_value,
                call.now,
            ),
        )
        qualification: JSON = {
            "QualificationTypeId": type_id,
            "CreationTime": call.now,
            "Name": name,
            "Description": description,
            "QualificationTypeStatus": status,
            "IsRequestable": auto_granted,
            "AutoGranted": auto_granted,
        }
        for key, value in (
            ("Keywords", keywords),
            ("RetryDelayInSeconds", retry),
            ("AutoGrantedValue", auto_value),
        ):
            if value is not None:
                qualification[key] = value
        return {"QualificationType": qualification}

    def _own_qualification_type(self, call: _Call) -> str:
        type_id = call.text("QualificationTypeId")
        if (
            self._db.execute(
                "SELECT 1 FROM qualification_types WHERE id = ? AND requester = ?", (type_id, call.requester)
            ).fetchone()
            is None
        ):
            raise call.error(
                f"QualificationType {type_id} does not exist or was not created by you.",
                "AWS.MechanicalTurk.QualificationTypeDoesNotExist",
            )
        return type_id

    @_operation("AssociateQualificationWithWorker")
    def _associate_qualification(self, call: _Call) -> JSON:
        type_id = self._own_qualification_type(call)
        worker_id = call.worker_id()
        value = call.integer("IntegerValue", default=1, lo=-(2**31), hi=2**31 - 1)
        self._db.execute(
            "INSERT INTO qualifications (qualification_type_id, worker_id, value, granted) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT (qualification_type_id, worker_id) DO UPDATE SET value = excluded.value",
            (type_id, worker_id, value, call.now),
        )
        return {}

    @_operation("DisassociateQualificationFromWorker")
    def _disassociate_qualification(self, call: _Call) -> JSON:
        type_id = self._own_qualification_type(call)
        self._db.execute(
            "DELETE FROM qualifications WHERE qualification_type_id = ? AND worker_id = ?",
            (type_id, call.worker_id()),
        )
        return {}

    @_operation("CreateWorkerBlock")
    def _create_worker_block(self, call: _Call) -> JSON:
        worker_id = call.worker_id()
        reason = call.text("Reason", max_len=4096)
        self._db.execute(
            "INSERT INTO worker_blocks (requester, worker_id, reason, time) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (requester, worker_id) DO UPDATE SET reason = excluded.reason",
            (call.requester, worker_id, reason, call.now),
        )
        return {}

    @_operation("DeleteWorkerBlock")
    def _delete_worker_block(self, call: _Call) -> JSON:
        self._db.execute(
            "DELETE FROM worker_blocks WHERE requester = ? AND worker_id = ?",
            (call.requester, call.worker_id()),
        )
        return {}

    @_operation("ListWorkerBlocks")
    def _list_worker_blocks(self, call: _Call) -> JSON:
        size, after = call.page()
        rows = self._db.execute(
            "SELECT * FROM worker_blocks WHERE requester = ? AND seq > ? ORDER BY seq LIMIT ?",
            (call.requester, after, size + 1),
        ).fetchall()
        response: JSON = {
            "NumResults": min(len(rows), size),
            "WorkerBlocks": [{"WorkerId": row["worker_id"], "Reason": row["reason"]} for row in rows[:size]],
        }
        if len(rows) > size:
            response["NextToken"] = _encode_page(rows[size - 1]["seq"])
        return response

    # -- worker side ----------------------------------------------------------------------

    def create_worker(
        self, name: str | None = None, *, locale: str = "US", simulated: bool = False
    ) -> WorkerAccount:
        """Create a worker. A person gets a fresh secret token (stored only as a hash); a
        simulated worker gets none, since it works through this store directly."""
        token = None if simulated else secrets.token_urlsafe(32)
        worker_id = _new_id("A", 14)
        with self._transaction() as now:
            self._db.execute(
                "INSERT INTO workers (id, token_hash, name, locale, simulated, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (worker_id, _token_hash(token) if token else None, name, locale, int(simulated), now),
            )
        return WorkerAccount(worker_id, token)

    def authenticate_worker(self, token: str) -> str | None:
        """The WorkerId whose token this is, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM workers WHERE token_hash = ?", (_token_hash(token),)
            ).fetchone()
        return None if row is None else str(row["id"])

    def _worker(self, worker_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM workers WHERE id = ?", (worker_id,)
        ).fetchone()
        if row is None:
            raise WorkerError("Unknown worker.")
        return row

    def _qualification_value(self, worker: sqlite3.Row, type_id: str) -> int | str | None:
        """What ``worker`` holds of a qualification type: an integer, a locale, or None."""
        if type_id == LOCALE_QUALIFICATION:
            return str(worker["locale"])
        if type_id in (PERCENT_APPROVED_QUALIFICATION, NUMBER_APPROVED_QUALIFICATION):
            counts = dict(
                self._db.execute(
                    "SELECT status, COUNT(*) FROM assignments "
                    "WHERE worker_id = ? AND status IN (?, ?) GROUP BY status",
                    (worker["id"], APPROVED, REJECTED),
                ).fetchall()
            )
            approved, rejected = counts.get(APPROVED, 0), counts.get(REJECTED, 0)
            if type_id == NUMBER_APPROVED_QUALIFICATION:
                return int(approved)
            return 100 if approved + rejected == 0 else approved * 100 // (approved + rejected)
        row = self._db.execute(
            "SELECT q.value FROM qualifications q "
            "JOIN qualification_types t ON t.id = q.qualification_type_id "
            "WHERE q.qualification_type_id = ? AND q.worker_id = ? AND t.status = 'Active'",
            (type_id, worker["id"]),
        ).fetchone()
        return None if row is None else int(row["value"])

    @staticmethod
    def _meets(requirement: Mapping[str, Any], held: int | str | None) -> bool:
        comparator: str = requirement["Comparator"]
        if comparator == "Exists":
            return held is not None
        if comparator == "DoesNotExist":
            return held is None
        if held is None:
            return False
        if isinstance(held, str):
            country, _, subdivision = held.partition("-")
            wanted = [
                (loc.get("Country"), loc.get("Subdivision")) for loc in requirement.get("LocaleValues", [])
            ]
            hit = any(c == country and (s is None or s == subdivision) for c, s in wanted)
            return hit if comparator in ("EqualTo", "In") else not hit
        values = [int(v) for v in requirement.get("IntegerValues", [])]
        if comparator in ("In", "NotIn"):
            return (held in values) == (comparator == "In")
        if not values:
            return False
        target = values[0]
        return {
            "LessThan": held < target,
            "LessThanOrEqualTo": held <= target,
            "GreaterThan": held > target,
            "GreaterThanOrEqualTo": held >= target,
            "EqualTo": held == target,
            "NotEqualTo": held != target,
        }.get(comparator, False)

    def _unmet_guards(self, worker: sqlite3.Row, requirements: Sequence[Mapping[str, Any]]) -> set[str]:
        """The ActionsGuarded of every requirement ``worker`` does not meet."""
        unmet = set()
        for requirement in requirements:
            type_id = requirement["QualificationTypeId"]
            held = None if type_id in MASTERS_QUALIFICATIONS else self._qualification_value(worker, type_id)
            if not self._meets(requirement, held):
                default = "PreviewAndAccept" if requirement.get("RequiredToPreview") else "Accept"
                unmet.add(str(requirement.get("ActionsGuarded") or default))
        return unmet

    def _findable(self, worker_id: str, now: float, hit_id: str | None = None) -> list[JSON]:
        """The Assignable HITs ``worker_id`` can find (as :meth:`available_hits` describes),
        with their Question, or only ``hit_id`` if given and findable."""
        worker = self._worker(worker_id)
        only, args = ("AND h.id = ? ", (hit_id,)) if hit_id is not None else ("", ())
        rows = self._db.execute(
            _HIT_SELECT + " WHERE h.disposed = 0 AND h.reviewing = 0 AND h.expiration > ? "
            "AND h.requester NOT IN (SELECT requester FROM worker_blocks WHERE worker_id = ?) "
            "AND h.id NOT IN (SELECT hit_id FROM assignments "
            f"WHERE worker_id = ? AND status IN (?, ?, ?, ?)) {only}"
            "GROUP BY h.seq ORDER BY h.seq",
            (now, worker_id, worker_id, ACCEPTED, *VISIBLE_STATES, *args),
        ).fetchall()
        listing = []
        for row in rows:
            if self._hit_status(row, now) != "Assignable":
                continue
            unmet = self._unmet_guards(worker, json.loads(row["qualification_requirements"]))
            if "DiscoverPreviewAndAccept" in unmet:
                continue
            hit = self._hit_json(row, now)
            hit.pop("RequesterAnnotation", None)
            hit["CanAccept"] = not unmet
            hit["CanPreview"] = "PreviewAndAccept" not in unmet
            if unmet:
                hit["Why"] = "You do not have the qualifications this HIT requires."
            listing.append(hit)
        return listing

    def available_hits(self, worker_id: str) -> list[JSON]:
        """The Assignable HITs ``worker_id`` can find, oldest first, each with ``CanAccept``,
        ``CanPreview`` and, when it can't accept, ``Why``. Left out: HITs of requesters who
        blocked the worker, HITs it holds or did, and HITs whose qualification requirements
        the worker fails and that guard ``DiscoverPreviewAndAccept``."""
        with self._transaction() as now:
            listing = self._findable(worker_id, now)
        for hit in listing:
            del hit["Question"]
        return listing

    def preview_hit(self, worker_id: str, hit_id: str) -> JSON:
        """A HIT ``worker_id`` may look at before accepting it, with its Question (MTurk's
        preview). ``WorkerError`` when it can't be found or its requirements guard previews."""
        with self._transaction() as now:
            found = self._findable(worker_id, now, hit_id)
        if not found:
            raise WorkerError("This HIT is no longer available.")
        if not found[0]["CanPreview"]:
            raise WorkerError("You do not have the qualifications this HIT requires to preview it.")
        return found[0]

    def accept_hit(self, worker_id: str, hit_id: str) -> str:
        """Accept ``hit_id`` for ``worker_id``: a new assignment's id. ``WorkerError`` when MTurk
        would refuse (HIT gone or full, already done, blocked, not qualified)."""
        with self._transaction() as now:
            worker = self._worker(worker_id)
            row = self._db.execute(_HIT_SELECT + " WHERE h.id = ? GROUP BY h.seq", (hit_id,)).fetchone()
            if row is None or self._hit_status(row, now) != "Assignable":
                raise WorkerError("This HIT is no longer available.")
            if self._db.execute(
                "SELECT 1 FROM worker_blocks WHERE requester = ? AND worker_id = ?",
                (row["requester"], worker_id),
            ).fetchone():
                raise WorkerError("The requester of this HIT has blocked you from working on their HITs.")
            if self._db.execute(
                "SELECT 1 FROM assignments WHERE hit_id = ? AND worker_id = ? AND status IN (?, ?, ?, ?)",
                (hit_id, worker_id, ACCEPTED, *VISIBLE_STATES),
            ).fetchone():
                raise WorkerError("You have already accepted or done this HIT.")
            if self._unmet_guards(worker, json.loads(row["qualification_requirements"])):
                raise WorkerError("You do not have the qualifications this HIT requires.")
            assignment_id = _new_id()
            self._db.execute(
                "INSERT INTO assignments (id, hit_id, worker_id, status, accept_time, deadline) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (assignment_id, hit_id, worker_id, ACCEPTED, now, now + row["assignment_duration"]),
            )
            return assignment_id

    def worker_assignment(self, worker_id: str, assignment_id: str) -> JSON:
        """An assignment of ``worker_id`` with its HIT's title, reward and Question."""
        with self._transaction():
            row = self._db.execute(
                "SELECT a.*, t.title, t.description, h.reward_cents, h.question FROM assignments a "
                "JOIN hits h ON h.id = a.hit_id JOIN hit_types t ON t.id = h.hit_type_id "
                "WHERE a.id = ? AND a.worker_id = ?",
                (assignment_id, worker_id),
            ).fetchone()
            if row is None:
                raise WorkerError("No such assignment.")
            return {
                "AssignmentId": row["id"],
                "HITId": row["hit_id"],
                "Status": row["status"],
                "Title": row["title"],
                "Description": row["description"],
                "Reward": _money(row["reward_cents"]),
                "AcceptTime": row["accept_time"],
                "Deadline": row["deadline"],
                "Question": row["question"],
                "SubmitTime": row["submit_time"],
                "RequesterFeedback": row["feedback"],
            }

    def return_assignment(self, worker_id: str, assignment_id: str) -> None:
        """Give an accepted assignment back (MTurk's "Return"): its place opens again."""
        with self._transaction():
            changed = self._db.execute(
                "UPDATE assignments SET status = ? WHERE id = ? AND worker_id = ? AND status = ?",
                (RETURNED, assignment_id, worker_id, ACCEPTED),
            ).rowcount
            if not changed:
                raise WorkerError("This assignment can't be returned: it is not in progress.")

    def submit_assignment(self, assignment_id: str, fields: Sequence[tuple[str, str]]) -> str:
        """Submit an accepted assignment with the posted form ``fields``; the answer XML.

        As at MTurk's externalSubmit the assignment id is the credential: the caller
        must hold the (unguessable) id of an assignment still in progress.
        """
        answer = build_answer_xml(fields)
        with self._transaction() as now:
            row = self._db.execute(
                "SELECT a.id, a.status, t.auto_approval_delay FROM assignments a "
                "JOIN hits h ON h.id = a.hit_id "
                "JOIN hit_types t ON t.id = h.hit_type_id WHERE a.id = ?",
                (assignment_id,),
            ).fetchone()
            if row is None or row["status"] != ACCEPTED:
                state = "unknown" if row is None else str(row["status"]).lower()
                raise WorkerError(f"This assignment can't be submitted (it is {state}).")
            self._db.execute(
                "UPDATE assignments SET status = ?, submit_time = ?, auto_approval_time = ?, answer = ? "
                "WHERE id = ?",
                (SUBMITTED, now, now + row["auto_approval_delay"], answer, assignment_id),
            )
        return answer

    def worker_assignments(self, worker_id: str, limit: int = 50) -> list[JSON]:
        """``worker_id``'s assignments, newest first (in progress, submitted, reviewed ...)."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT a.id, a.hit_id, a.status, a.deadline, a.accept_time, a.feedback, t.title, "
                "h.reward_cents "
                "FROM assignments a JOIN hits h ON h.id = a.hit_id JOIN hit_types t ON t.id = h.hit_type_id "
                "WHERE a.worker_id = ? ORDER BY a.seq DESC LIMIT ?",
                (worker_id, limit),
            ).fetchall()
        return [
            {
                "AssignmentId": r["id"],
                "HITId": r["hit_id"],
                "Status": r["status"],
                "Deadline": r["deadline"],
                "AcceptTime": r["accept_time"],
                "Title": r["title"],
                "Reward": _money(r["reward_cents"]),
                "RequesterFeedback": r["feedback"],
            }
            for r in rows
        ]

    def worker_notifications(self, worker_id: str, limit: int = 50) -> list[JSON]:
        """Messages sent to ``worker_id`` with NotifyWorkers, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT subject, message, time FROM notifications "
                "WHERE worker_id = ? ORDER BY seq DESC LIMIT ?",
                (worker_id, limit),
            ).fetchall()
        return [{"Subject": r["subject"], "MessageText": r["message"], "Time": r["time"]} for r in rows]

    def worker_bonuses(self, worker_id: str, limit: int = 50) -> list[JSON]:
        """Bonuses paid to ``worker_id``, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT assignment_id, cents, reason, time FROM bonuses "
                "WHERE worker_id = ? ORDER BY seq DESC LIMIT ?",
                (worker_id, limit),
            ).fetchall()
        return [
            {
                "AssignmentId": r["assignment_id"],
                "BonusAmount": _money(r["cents"]),
                "Reason": r["reason"],
                "GrantTime": r["time"],
            }
            for r in rows
        ]

    def simulated_workers(self) -> list[str]:
        """The ids of the simulated workers, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM workers WHERE simulated = 1 ORDER BY rowid").fetchall()
        return [str(row["id"]) for row in rows]
