"""Crowd verification, end to end: tasks -> HITs -> votes -> verdicts, and the money.

The life of a task (``function`` ``image-similarity``)::

    put_task(name, {"image1": {"url"}, "image2": {"url"}})
      -> budget check (rewards + bonuses + fees, and GetAccountBalance)   BudgetExceeded
      -> task row "processing", HIT intent (token), CreateHITWithHITType, HIT recorded
    sync()   (on GET of a task, ``match crowd sync``, ``--loop``)
      -> reconcile intents left by a crash (HITs, extensions, bonuses, blocks)
      -> ListAssignmentsForHIT (all pages) -> parse QuestionFormAnswers
      -> gold right: the vote counts, SendBonus;  gold wrong: the vote is dropped
      -> per-worker gold accuracy; CreateWorkerBlock under the threshold
      -> approve (or reject) with feedback; NotifyWorkers, batched by 100
      -> posterior (WeightedVote, skills from gold) >= confidence, or small spread:
             completed {"similarityScore", "label", "match", "confidence", ...}
         else extend (CreateAdditionalAssignmentsForHIT; a new HIT where MTurk's
             "<10 can't become >=10" rule forbids it) up to the maximum
         HIT expired first: failed {"code": "Expired", ...}
      -> finished tasks: HITs expired, late work reviewed, DeleteHIT (no orphans),
         unused money released in the ledger

``image-similarity-test`` completes at once with :func:`match.crowd.tasks.mock_result`
and never touches the endpoint.

Every spend is *intent, call, record* (see :mod:`match.crowd.store`) with a
UniqueRequestToken derived from our ids (:func:`match.crowd.tasks.request_token`), and
an intent found on the next sync is first looked up at the endpoint (ListHITs by
RequesterAnnotation, GetHIT's MaxAssignments, ListBonusPayments) before it is retried
with the same token: killing the process anywhere never pays twice.

Money is in integer cents. The ledger holds commitments: a HIT commits the worst case
(every assignment approved and paid its bonus, with fees); when the HIT is deleted
the unused part is released, so the ledger total becomes the actual cost.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from match import config as match_config
from match.crowd import tasks as T
from match.crowd.aggregate import WeightedVote
from match.crowd.media import MediaStore, transformed_copy
from match.crowd.mturk import Turk, duplicate_hit_id, is_duplicate, parse_answer
from match.crowd.store import CrowdState, Row
from match.errors import (
    BadRequest,
    BudgetExceeded,
    Conflict,
    CrowdError,
    MatchError,
    NotFound,
    TurkRequestError,
)

__all__ = ["FUNCTIONS", "CrowdSettings", "CrowdService", "task_view"]

log = logging.getLogger(__name__)

FUNCTIONS = ("image-similarity", "image-similarity-test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MEDIA = "media:"


@dataclass(frozen=True)
class CrowdSettings:
    """The ``MATCH_CROWD_*`` settings the service uses, in the units it computes with.

    Defaults and parsing live in one place, :data:`match.config.SETTINGS`;
    :meth:`from_config` only converts (dollars to cents, lists to tuples).
    """

    endpoint: str
    reward_cents: int
    bonus_cents: int
    assignments: int
    max_assignments: int
    confidence: float
    max_spread: float
    lifetime: int
    assignment_duration: int
    auto_approval_delay: int
    qualifications: tuple[dict[str, Any], ...]
    budget_cents: int
    block_below: float
    block_min_gold: int
    reject_failed_gold: bool
    auto_review: bool
    title: str
    media_ttl: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CrowdSettings:
        """Read a settings mapping: missing keys take the table's defaults, raw strings
        (``"false"``, ``"0.05"``) are parsed as strictly as the environment is."""
        get = match_config.load(config, environ={}).__getitem__
        return cls(
            endpoint=str(get("MATCH_CROWD_ENDPOINT")),
            reward_cents=T.cents(get("MATCH_CROWD_REWARD")),
            bonus_cents=T.cents(get("MATCH_CROWD_BONUS")),
            assignments=get("MATCH_CROWD_ASSIGNMENTS"),
            max_assignments=get("MATCH_CROWD_MAX_ASSIGNMENTS"),
            confidence=get("MATCH_CROWD_CONFIDENCE"),
            max_spread=get("MATCH_CROWD_MAX_SPREAD"),
            lifetime=get("MATCH_CROWD_LIFETIME"),
            assignment_duration=get("MATCH_CROWD_ASSIGNMENT_DURATION"),
            auto_approval_delay=get("MATCH_CROWD_AUTO_APPROVAL_DELAY"),
            qualifications=tuple(get("MATCH_CROWD_QUALIFICATIONS")),
            budget_cents=T.cents(get("MATCH_CROWD_BUDGET")),
            block_below=get("MATCH_CROWD_BLOCK_BELOW"),
            block_min_gold=get("MATCH_CROWD_BLOCK_MIN_GOLD"),
            reject_failed_gold=get("MATCH_CROWD_REJECT_FAILED_GOLD"),
            auto_review=get("MATCH_CROWD_AUTO_REVIEW"),
            title=get("MATCH_CROWD_TITLE"),
            media_ttl=get("MATCH_CROWD_MEDIA_TTL"),
        )


def task_view(row: Row) -> dict[str, Any]:
    """The public shape of a task: ``{taskName, input, problemDetails, state, result}``."""
    return {
        "taskName": row["name"],
        "input": row["input"],
        "problemDetails": row.get("problem"),
        "state": row["state"],
        "result": row.get("result") if row["state"] == "completed" else None,
    }


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))


def should_block(right: int, total: int, threshold: float, min_gold: int) -> bool:
    """Whether a worker's gold record shows accuracy under ``threshold``, with confidence.

    Blocks once at least ``min_gold`` gold answers are in and a worker exactly at the
    threshold would do this badly less than 5 % of the time (a one-sided binomial test),
    so an honest worker's unlucky streak is not mistaken for spam.
    """
    return total >= min_gold and _binomial_cdf(right, total, threshold) < 0.05


def skill(exact: int, total: int) -> float:
    """A worker's accuracy on the four-step scale, from how often they gave a gold pair's
    exact label: the Beta posterior mean with a prior of 0.7 worth 4 answers."""
    return (exact + 2.8) / (total + 4.0)


class _ProcessLock:
    """A re-entrant lock that also holds across processes (a thread lock, then ``flock``
    on a file beside the crowd state).

    Every check of the budget is followed by its ledger entry under this lock, and
    several processes share one crowd state (gunicorn workers, the ``sync --loop``
    sidecar): with a thread lock alone, two processes could both pass the check and
    both commit, spending past the cap. It also keeps two syncs from collecting,
    paying or notifying the same things at once.
    """

    def __init__(self, path: Any) -> None:
        self._thread = threading.RLock()
        self._path = path
        self._depth = 0
        self._file: Any = None

    def __enter__(self) -> None:
        self._thread.acquire()
        if self._depth == 0:
            try:
                self._file = open(self._path, "ab")  # noqa: SIM115 - held until __exit__
                fcntl.flock(self._file, fcntl.LOCK_EX)
            except BaseException:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._thread.release()
                raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        self._thread.release()


@dataclass
class SyncSummary:
    """What one :meth:`CrowdService.sync` did (the CLI prints it)."""

    collected: int = 0
    completed: int = 0
    failed: int = 0
    extended: int = 0
    bonuses: int = 0
    blocked: int = 0
    deleted: int = 0
    reconciled: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The counts as a dict."""
        return dict(self.__dict__)


class CrowdService:
    """The crowd side of match over one data directory and one endpoint.

    Example::

        service = CrowdService.from_config(match.config.load())
        task = service.put_task("image-similarity", "pair-1",
                                {"image1": {"url": "https://..."}, "image2": {"url": "https://..."}})
        service.sync()
        service.get_task("image-similarity", "pair-1")["result"]["similarityScore"]
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        state: CrowdState | None = None,
        turk: Turk | None = None,
        media: MediaStore | None = None,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str], bytes] | None = None,
        compare: Callable[[bytes, bytes], float] | None = None,
    ) -> None:
        self.config = config
        self.settings = CrowdSettings.from_config(config)
        self.clock = clock
        self.state = state or CrowdState(config["MATCH_DATA_DIR"], clock=clock)
        self._turk = turk
        self.media = media or MediaStore.from_config(config, clock=clock)
        self._fetch = fetch
        self._compare = compare
        self._lock = _ProcessLock(self.state.path.with_name(self.state.path.name + ".lock"))
        self._balance: int | None = None  # GetAccountBalance, counted down within one pass
        self._fresh_bonuses: set[str] = set()  # bonus intents made by this process

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CrowdService:
        """Build from the settings mapping."""
        return cls(config)

    @property
    def turk(self) -> Turk:
        """The endpoint client, built on first use (so the -test function needs none)."""
        if self._turk is None:
            self._turk = Turk(self.settings.endpoint)
        return self._turk

    def close(self) -> None:
        """Close the state database."""
        self.state.close()

    # ===== the Tasks API ===========================================================

    def put_task(self, function: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a task (``PUT``); the same input again returns the existing task.

        Raises BadRequest (bad name or input), Conflict (the name is taken by another
        input), BudgetExceeded (402, nothing created) or a CrowdError from the endpoint.
        """
        _check_function(function)
        _check_name(name)
        image1, image2 = _check_input(body)
        task_input = {"image1": {"url": image1}, "image2": {"url": image2}}
        existing = self.state.task(function, name)
        if existing is not None:
            if existing["input"] == task_input:
                return task_view(existing)
            raise Conflict(f"task {name!r} exists with another input; delete it first")
        if function == "image-similarity-test":
            row = self.state.create_task(
                function,
                name,
                task_input,
                state="completed",
                pair_id=T.pair_id("p", image1, image2),
                result=T.mock_result(image1, image2),
            )
            return task_view(row)
        rows = self._create_tasks([(name, image1, image2, None, None)])
        return task_view(rows[0])

    def get_task(self, function: str, name: str, *, sync: bool = True) -> dict[str, Any]:
        """The task (``GET``), synced with the endpoint first while it is processing."""
        _check_function(function)
        row = self.state.task(function, name)
        if row is None:
            raise NotFound(f"no task named {name!r} for {function}")
        if sync and row["state"] == "processing":
            try:
                self.sync(task_ids=[row["id"]])
            except CrowdError as exc:  # the stored state is still the truth we have
                log.warning("sync of task %s failed: %s", name, exc.message)
            row = self.state.task_by_id(row["id"]) or row
        return task_view(row)

    def delete_task(self, function: str, name: str) -> None:
        """Delete a finished task (``DELETE``); Conflict (409) while it is processing."""
        _check_function(function)
        row = self.state.task(function, name)
        if row is None:
            raise NotFound(f"no task named {name!r} for {function}")
        if row["state"] == "processing":
            raise Conflict(f"task {name!r} is still processing; delete it once it has completed or failed")
        self.state.delete_task(row["id"])

    def list_tasks(
        self,
        function: str,
        *,
        state: str | None = None,
        name_prefix: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Live tasks of ``function``, oldest first: ``{"tasks": [...], "nextOffset": int | None}``."""
        _check_function(function)
        if state is not None and state not in ("processing", "completed", "failed"):
            raise BadRequest("state must be one of processing, completed, failed")
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        if offset < 0:
            raise BadRequest("offset must be >= 0")
        rows = self.state.tasks(
            function=function, state=state, name_prefix=name_prefix, limit=limit + 1, offset=offset
        )
        more = len(rows) > limit
        return {"tasks": [task_view(r) for r in rows[:limit]], "nextOffset": offset + limit if more else None}

    # ===== search integration ======================================================

    def verify_matches(
        self, query_image: bytes, matches: Sequence[Any], top: int = 3
    ) -> list[dict[str, Any]]:
        """Send the query and its ``top`` matches to workers; returns one entry per match.

        ``matches`` are :class:`match.store.Match` objects or dicts with ``filepath``,
        ``distance`` (0..1) and ``metadata``; a match is verifiable when its filepath or
        ``metadata["url"]`` is an http(s) URL workers can open. The whole batch is
        checked against the budget before anything is created. Each entry is
        ``{"filepath", "taskName", "state", "result"}`` or ``{"filepath", "error"}``.
        """
        query_key = self.media.keep(query_image)
        query_sha = hashlib.sha256(query_image).hexdigest()
        self._generate_gold_from(query_key, query_image)
        planned: list[tuple[str, str, str, float | None, dict[str, Any]]] = []
        out: list[dict[str, Any]] = []
        for item in list(matches)[:top]:
            filepath, distance, metadata = _match_fields(item)
            url = filepath if filepath.startswith(("http://", "https://")) else str(metadata.get("url") or "")
            if not url.startswith(("http://", "https://")) or len(url) > T.MAX_URL_LENGTH:
                out.append(
                    {
                        "filepath": filepath,
                        "error": "no http(s) URL (<= 400 chars) workers can open: "
                        "index it with an http(s) filepath or metadata.url",
                    }
                )
                continue
            name = "verify-" + T.pair_id("v", query_sha, filepath)[2:]
            origin = {"query_sha256": query_sha, "filepath": filepath}
            planned.append((name, _MEDIA + query_key, url, distance, origin))
            out.append({"filepath": filepath, "taskName": name})
        fresh = [p for p in planned if self.state.task("image-similarity", p[0]) is None]
        self._create_tasks(fresh)
        for entry in out:
            if "taskName" in entry:
                row = self.state.task("image-similarity", entry["taskName"])
                if row is not None:
                    entry.update(state=row["state"], result=task_view(row)["result"])
        return out

    def verdicts(self, query_image: bytes, filepaths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The crowd verdict for (query, filepath) pairs that have one.

        ``{filepath: {"taskName", "state", "similarityScore", "label", "match",
        "confidence"}}``; a pair still processing has ``state`` only.
        """
        query_sha = hashlib.sha256(query_image).hexdigest()
        found: dict[str, dict[str, Any]] = {}
        for filepath in filepaths:
            key = T.pair_id("v", query_sha, filepath)
            row = self.state.latest_verdict(key) or self.state.task("image-similarity", "verify-" + key[2:])
            if row is None:
                continue
            verdict: dict[str, Any] = {"taskName": row["name"], "state": row["state"]}
            if row["state"] == "completed" and row.get("result"):
                verdict.update(
                    {
                        k: row["result"][k]
                        for k in ("similarityScore", "label", "match", "confidence")
                        if k in row["result"]
                    }
                )
            found[filepath] = verdict
        return found

    # ===== gold ====================================================================

    def add_gold(self, image1: str, image2: str, label: str, *, source: str = "user") -> str:
        """Add a known-answer pair (URLs, or ``media:<key>`` refs); returns its id."""
        if label not in T.LABELS:
            raise BadRequest(f"gold label must be one of {', '.join(T.LABELS)}")
        for ref in (image1, image2):
            if not (ref.startswith(("http://", "https://", _MEDIA)) and len(ref) <= T.MAX_URL_LENGTH):
                raise BadRequest(
                    f"gold image must be an http(s) URL of at most {T.MAX_URL_LENGTH} characters"
                )
        gold_id = T.pair_id("p", image1, image2)
        self.state.add_gold(gold_id, image1, image2, label, source)
        return gold_id

    def generate_gold(self, images: Sequence[bytes]) -> list[str]:
        """Generated gold from images: each against a transformed copy (``same``) and
        against another image of the list that is clearly different (``different``)."""
        keys = [self.media.keep(data) for data in images]
        made: list[str] = []
        for index, (key, data) in enumerate(zip(keys, images, strict=True)):
            made += self._generate_gold_from(key, data, seed=index)
            other = (index + 1) % len(images)
            if other != index and self._clearly_different(data, images[other]):
                made.append(
                    self.add_gold(_MEDIA + key, _MEDIA + keys[other], "different", source="generated")
                )
        return made

    def _generate_gold_from(self, key: str, data: bytes, seed: int = 0) -> list[str]:
        """A ``same`` gold (image vs a transformed copy) and, when an earlier kept image is
        clearly different, a ``different`` gold."""
        made: list[str] = []
        try:
            copy = transformed_copy(data, seed)
        except Exception as exc:  # Pillow raises many types for undecodable bytes
            log.info("no generated gold from an undecodable image: %s", exc)
            return made
        made.append(self.add_gold(_MEDIA + key, _MEDIA + self.media.keep(copy), "edited", source="generated"))
        for gold in reversed(self.state.gold()):
            if gold["source"] != "generated" or gold["label"] != "edited" or gold["image1"] == _MEDIA + key:
                continue
            try:
                other = self.media.read(gold["image1"][len(_MEDIA) :])
            except MatchError:
                continue
            if self._clearly_different(data, other):
                made.append(self.add_gold(_MEDIA + key, gold["image1"], "different", source="generated"))
            break
        return made

    def _clearly_different(self, a: bytes, b: bytes) -> bool:
        """Signature distance well above the match cutoff: at least MATCH_CUTOFF + 0.15
        (0.6 by default; unrelated photographs measure about 0.6 to 0.7)."""
        if hashlib.sha256(a).digest() == hashlib.sha256(b).digest():
            return False
        floor = min(0.95, float(self.config.get("MATCH_CUTOFF", 0.45)) + 0.15)
        try:
            if self._compare is not None:
                return self._compare(a, b) >= floor
            from match import service as match_service

            return match_service.compare(self.config, a, b).distance >= floor
        except MatchError:
            return False

    def _gold_pool(self) -> list[Row]:
        return self.state.gold()

    def _ensure_gold(self, image1: str, image2: str) -> None:
        """Make sure some gold exists; when there is none at all, generate it from the
        task's own images (fetched with match's guarded fetcher)."""
        if self._gold_pool():
            return
        fetched: list[bytes] = []
        for url in (image1, image2):
            if url.startswith(_MEDIA):
                fetched.append(self.media.read(url[len(_MEDIA) :]))
            elif self._fetch is not None:
                fetched.append(self._fetch(url))
            else:
                from match.fetch import Fetcher

                fetcher = Fetcher(
                    timeout=float(self.config.get("MATCH_FETCH_TIMEOUT", 10.0)),
                    max_bytes=int(self.config.get("MATCH_MAX_UPLOAD_BYTES", 20 << 20)),
                    allow_networks=self.config.get("MATCH_FETCH_ALLOW_NETWORKS") or (),
                )
                fetched.append(fetcher.fetch(url, field="input.image1.url"))
        for index, data in enumerate(fetched):
            self._generate_gold_from(self.media.keep(data), data, seed=index)

    def _pick_gold(self, hit_key: str, image1: str, image2: str) -> Row:
        """The gold pair for a HIT: preferably one sharing no image with the real pair; the
        least used so far, alternating labels; ties broken by the HIT key."""
        everything = self._gold_pool()
        # Prefer gold sharing no image with the real pair; any gold beats none.
        pool = [g for g in everything if not {g["image1"], g["image2"]} & {image1, image2}] or everything
        if not pool:
            raise CrowdError(
                "no gold question available: add a gold set (`match crowd gold add`) or "
                "generate one from images (`match crowd gold generate`)"
            )
        uses: dict[str, int] = {}
        label_uses: dict[str, int] = {}
        for hit in self.state.hits():
            uses[hit["gold_id"]] = uses.get(hit["gold_id"], 0) + 1
        by_id = {g["gold_id"]: g for g in self._gold_pool()}
        for gold_id, n in uses.items():
            if gold_id in by_id:
                match = T.is_match(by_id[gold_id]["label"])
                label_uses[str(match)] = label_uses.get(str(match), 0) + n

        def rank(g: Row) -> tuple[int, int, str]:
            return (
                label_uses.get(str(T.is_match(g["label"])), 0),
                uses.get(g["gold_id"], 0),
                hashlib.sha256(f"{hit_key}{g['gold_id']}".encode()).hexdigest(),
            )

        return min(pool, key=rank)

    # ===== money ===================================================================

    def _hit_commitment(self, assignments: int, max_assignments: int) -> int:
        """Worst-case cents of ``assignments`` more assignments on a HIT of ``max_assignments``."""
        s = self.settings
        reward = s.reward_cents + T.fee_cents(s.reward_cents, max_assignments)
        bonus = s.bonus_cents + T.fee_cents(s.bonus_cents) if s.bonus_cents else 0
        return assignments * (reward + bonus)

    def check_budget(self, cents: int, what: str) -> None:
        """Refuse (BudgetExceeded, nothing spent) a spend that passes the cap or the balance."""
        spent = self.state.spent()
        cap = self.settings.budget_cents
        if spent + cents > cap:
            raise BudgetExceeded(
                f"{what} would cost ${T.dollars(cents)}: ${T.dollars(spent)} of the "
                f"${T.dollars(cap)} budget (MATCH_CROWD_BUDGET) is committed; nothing was "
                "created or paid"
            )
        balance = self._available()
        if balance < cents:
            raise BudgetExceeded(
                f"{what} would cost ${T.dollars(cents)} but the account balance "
                f"(GetAccountBalance) is ${T.dollars(balance)}; nothing was created or paid"
            )
        self._balance = balance - cents

    def _available(self) -> int:
        """GetAccountBalance, asked once per sync pass or batch and then counted down locally
        as we spend (every spend is checked against it)."""
        if self._balance is None:
            self._balance = self.turk.balance()
        return self._balance

    # ===== HITs ====================================================================

    def _hit_type_id(self) -> str:
        s = self.settings
        params: dict[str, Any] = {
            "AutoApprovalDelayInSeconds": s.auto_approval_delay,
            "AssignmentDurationInSeconds": s.assignment_duration,
            "Reward": T.dollars(s.reward_cents),
            "Title": s.title,
            "Keywords": "image, photo, comparison, similarity",
            "Description": "Look at pairs of images and say whether they show the same picture.",
        }
        if s.qualifications:
            params["QualificationRequirements"] = list(s.qualifications)
        fingerprint = hashlib.sha256(
            json.dumps([self.turk.url, params], sort_keys=True).encode()
        ).hexdigest()[:16]
        key = f"hit_type:{fingerprint}"
        cached = self.state.get_meta(key)
        if cached:
            return cached
        hit_type_id = self.turk.create_hit_type(**params)
        self.state.set_meta(key, hit_type_id)
        return hit_type_id

    def _create_tasks(
        self, planned: Sequence[tuple[str, str, str, float | None, dict[str, Any] | None]]
    ) -> list[Row]:
        """Create tasks and their first HITs, all or nothing as far as money goes.

        ``planned`` rows are (name, image1 ref, image2 ref, signature distance, origin).
        """
        if not planned:
            return []
        s = self.settings
        with self._lock:
            self._balance = None
            for _name, image1, image2, _d, _o in planned:
                self._ensure_gold(image1, image2)
            self.check_budget(
                len(planned) * self._hit_commitment(s.assignments, s.assignments),
                f"{len(planned)} task(s) of {s.assignments} assignments",
            )
            hit_type_id = self._hit_type_id()
            rows: list[Row] = []
            for name, image1, image2, distance, origin in planned:
                pid = (
                    T.pair_id("v", origin["query_sha256"], origin["filepath"])
                    if origin
                    else T.pair_id("p", image1, image2)
                )
                row = self.state.create_task(
                    "image-similarity",
                    name,
                    {"image1": {"url": image1}, "image2": {"url": image2}},
                    state="processing",
                    pair_id=pid,
                    distance=distance,
                    origin=origin,
                )
                self._new_hit(row, 0, s.assignments, hit_type_id)
                rows.append(self.state.task_by_id(row["id"]) or row)
            return rows

    def _new_hit(self, task: Row, seq: int, assignments: int, hit_type_id: str | None = None) -> None:
        """Intent, commitment, CreateHITWithHITType, record. Safe to call again."""
        image1, image2 = task["input"]["image1"]["url"], task["input"]["image2"]["url"]
        hit_key = f"task{task['id']}-hit{seq}"
        gold = self._pick_gold(hit_key, image1, image2)
        token = T.request_token("hit", self.state.path, hit_key)
        self.state.add_hit(
            {
                "hit_key": hit_key,
                "task_id": task["id"],
                "seq": seq,
                "token": token,
                "gold_id": gold["gold_id"],
                "gold_pair_id": gold["gold_id"],
                "max_assignments": assignments,
                "reward_cents": self.settings.reward_cents,
                "state": "intent",
                "created_at": self.clock(),
            }
        )
        self.state.spend(f"hit:{hit_key}", "hit", self._hit_commitment(assignments, assignments), task["id"])
        self._send_hit(self.state.hit(hit_key) or {}, hit_type_id)

    def _question(self, task: Row, hit: Row) -> str:
        gold = self.state.gold(hit["gold_id"])[0]
        real = T.Pair(
            T.pair_id("p", task["input"]["image1"]["url"], task["input"]["image2"]["url"]),
            self._url(task["input"]["image1"]["url"]),
            self._url(task["input"]["image2"]["url"]),
        )
        known = T.Pair(gold["gold_id"], self._url(gold["image1"]), self._url(gold["image2"]))
        return T.question_xml(T.order_pairs(real, known, hit["hit_key"]), title=self.settings.title)

    def _url(self, ref: str) -> str:
        """A URL a worker can open for an image reference (kept images get a signed URL)."""
        if ref.startswith(_MEDIA):
            return self.media.url(ref[len(_MEDIA) :], self.settings.lifetime + self.settings.media_ttl)
        return ref

    def _send_hit(self, hit: Row, hit_type_id: str | None = None) -> None:
        """Create the HIT of an ``intent`` row (or find the one a crashed run created)."""
        task = self.state.task_by_id(hit["task_id"])
        assert task is not None
        hit_type_id = hit_type_id or self._hit_type_id()
        try:
            created = self.turk.create_hit(
                HITTypeId=hit_type_id,
                MaxAssignments=hit["max_assignments"],
                LifetimeInSeconds=self.settings.lifetime,
                Question=self._question(task, hit),
                RequesterAnnotation=hit["hit_key"],
                UniqueRequestToken=hit["token"],
            )
            hit_id, expires = created["HITId"], _epoch(created.get("Expiration"))
        except TurkRequestError as exc:
            if not is_duplicate(exc):
                raise
            hit_id = duplicate_hit_id(exc) or self._find_hit(hit["hit_key"])
            if hit_id is None:
                raise
            expires = None
        self._record_hit(hit, hit_id, expires)

    def _record_hit(self, hit: Row, hit_id: str, expires: float | None = None) -> None:
        """Mark an intent row open as the endpoint's HIT ``hit_id``."""
        if expires is None:
            expires = _epoch(self.turk.get_hit(hit_id).get("Expiration"))
        self.state.update_hit(
            hit["hit_key"],
            hit_id=hit_id,
            state="open",
            expires_at=expires or self.clock() + self.settings.lifetime,
        )

    def _find_hit(self, hit_key: str) -> str | None:
        """The HITId of the HIT annotated ``hit_key`` at the endpoint, if any."""
        for remote in self.turk.list_hits():
            if remote.get("RequesterAnnotation") == hit_key:
                return str(remote["HITId"])
        return None

    # ===== sync ====================================================================

    def sync(self, task_ids: Sequence[int] | None = None) -> SyncSummary:
        """One pass: reconcile, collect, review, pay, decide, extend, clean up."""
        summary = SyncSummary()
        with self._lock:
            self._balance = None
            self._reconcile(summary)
            # A full pass asks which HITs are Reviewable (all answers in, or expired) in one
            # paginated call, instead of listing the assignments of every open HIT.
            reviewable = (
                None
                if task_ids is not None
                else {str(h["HITId"]) for h in self.turk.pages("ListReviewableHITs", "HITs", MaxResults=100)}
            )
            rows = (
                [r for r in (self.state.task_by_id(i) for i in task_ids) if r]
                if task_ids is not None
                else self.state.tasks(state="processing", function="image-similarity", limit=1_000_000)
            )
            for task in rows:
                if task["state"] != "processing":
                    continue
                try:
                    self._sync_task(task, summary, reviewable)
                except BudgetExceeded as exc:
                    summary.errors.append(f"{task['name']}: {exc.message}")
                    self._finish(task, summary, budget_message=exc.message)
            try:
                self._pay_bonuses(summary)
            except BudgetExceeded as exc:
                summary.errors.append(exc.message)
            self._send_blocks(summary)
            self._notify()
            self._cleanup(summary)
        return summary

    def _reconcile(self, summary: SyncSummary) -> None:
        """Finish whatever a crashed run left as an intent, without repeating it."""
        intents = self.state.hits(states=["intent"])
        # A crashed run may have created the HIT already: look for it by its annotation
        # first. The request token alone would catch it for 24 hours only (MTurk and the
        # crowd server forget tokens after that), and a later sync would make a second HIT.
        existing = {str(r.get("RequesterAnnotation")): str(r["HITId"]) for r in self.turk.list_hits()} \
            if intents else {}
        for hit in intents:
            if hit["hit_key"] in existing:
                self._record_hit(hit, existing[hit["hit_key"]])
            else:
                self._send_hit(hit)
            summary.reconciled += 1
        for ext in self.state.extensions(state="intent"):
            extended = self.state.hit(ext["hit_key"])
            assert extended is not None and extended["hit_id"]
            remote = self.turk.get_hit(extended["hit_id"])
            if int(remote.get("MaxAssignments", 0)) < ext["target"]:
                self._extend_call(extended, ext["token"], ext["count"])
            self.state.finish_extension(ext["token"])
            self.state.update_hit(extended["hit_key"], max_assignments=ext["target"])
            summary.reconciled += 1

    def _sync_task(self, task: Row, summary: SyncSummary, reviewable: set[str] | None = None) -> None:
        """Collect a task's HITs (only the Reviewable ones when ``reviewable`` is given:
        all their assignments are in, or they expired), then decide, extend or wait."""
        for hit in self.state.hits(task_id=task["id"], states=["open"]):
            if reviewable is None or hit["hit_id"] in reviewable:
                self._collect(task, hit, summary)
        task = self.state.task_by_id(task["id"]) or task
        result, decided = self._estimate(task)
        self.state.update_result(task["id"], result)
        if decided:
            self.state.finish_task(task["id"], "completed", result=result)
            summary.completed += 1
            return
        hits = self.state.hits(task_id=task["id"])
        total = sum(h["max_assignments"] for h in hits)
        received = len(self.state.assignments(task_id=task["id"]))
        latest = hits[-1] if hits else None
        if latest is not None and latest["expires_at"] is not None and latest["expires_at"] <= self.clock():
            self._finish(task, summary)  # the HIT's lifetime ran out before a confident verdict
            return
        if received < total:
            return  # still waiting for assignments already paid for
        if total >= self.settings.max_assignments:
            if result.get("votes"):  # the maximum is reached: the best estimate it is
                self.state.finish_task(task["id"], "completed", result=result)
                summary.completed += 1
            else:
                self._finish(task, summary, no_votes=True)
            return
        self._extend(task, hits, summary)

    def _finish(
        self, task: Row, summary: SyncSummary, *, no_votes: bool = False, budget_message: str | None = None
    ) -> None:
        """Fail a task: Expired (the default), NoValidAnswers or BudgetExceeded."""
        received = len(self.state.assignments(task_id=task["id"]))
        if budget_message is not None:
            problem = {"code": "BudgetExceeded", "message": budget_message}
        elif no_votes:
            problem = {
                "code": "NoValidAnswers",
                "message": f"None of the {received} answers passed the "
                "known-answer check, and the maximum number of assignments was reached.",
            }
        else:
            problem = {
                "code": "Expired",
                "message": "Not enough Workers provided answers before the task "
                f"expired ({received} answer(s) received, no confident verdict).",
            }
        self.state.finish_task(task["id"], "failed", problem=problem)
        summary.failed += 1

    def _estimate(self, task: Row) -> tuple[dict[str, Any], bool]:
        """The task's posterior from its counted votes; (result, confident?)."""
        assignments = self.state.assignments(task_id=task["id"])
        votes = [a for a in assignments if a["counted"]]
        skills = {}
        for vote in votes:  # only the voters' records: this runs for every open task on every sync
            worker = self.state.worker(vote["worker_id"])
            if worker is not None:
                skills[vote["worker_id"]] = skill(worker["gold_exact"], worker["gold_total"])
        table = [(task["id"], v["worker_id"], v["label"]) for v in votes]
        answers = len(assignments)
        if not table:
            return {"similarityScore": None, "votes": 0, "answers": answers}, False
        model = WeightedVote(skills=skills, labels=T.LABELS).fit(table)
        result: dict[str, Any] = dict(T.result_from_probas(model.probas_[task["id"]]))
        scores = [T.LABEL_SCORES[v["label"]] for v in votes]
        spread = statistics.pstdev(scores) if len(scores) > 1 else 1.0
        result.update(
            votes=len(votes),
            answers=answers,
            spread=round(spread, 4),
            labels={label: sum(1 for v in votes if v["label"] == label) for label in T.LABELS},
            costCents=self.state.spent(task["id"]),
        )
        confident = result["confidence"] >= self.settings.confidence or (
            len(votes) >= 3 and spread <= self.settings.max_spread
        )
        return result, bool(confident)

    def _collect(self, task: Row, hit: Row, summary: SyncSummary) -> None:
        """Collect, judge and review the assignments of one HIT."""
        gold = self.state.gold(hit["gold_id"])[0]
        real_pid = T.pair_id("p", task["input"]["image1"]["url"], task["input"]["image2"]["url"])
        counted_workers = {a["worker_id"] for a in self.state.assignments(task_id=task["id"]) if a["counted"]}
        for remote in self.turk.assignments(hit["hit_id"]):
            assignment_id = remote["AssignmentId"]
            known = self.state.assignment(assignment_id)
            if known is None:
                labels = T.parse_labels(parse_answer(remote.get("Answer", "")), [real_pid, gold["gold_id"]])
                worker_id = remote["WorkerId"]
                gold_answer = labels[gold["gold_id"]]
                gold_ok = T.gold_correct(gold["label"], gold_answer)
                worker = self.state.record_gold(worker_id, gold_ok, gold_answer == gold["label"])
                if not worker["blocked"] and should_block(
                    worker["gold_exact"],
                    worker["gold_total"],
                    self.settings.block_below,
                    self.settings.block_min_gold,
                ):
                    self.state.block_worker(worker_id)
                    self.state.uncount_worker(worker_id)
                    worker = self.state.worker(worker_id) or worker
                    summary.blocked += 1
                label = labels[real_pid]
                counted = bool(
                    gold_ok
                    and label is not None
                    and not worker["blocked"]
                    and worker_id not in counted_workers
                    and task["state"] == "processing"
                )
                if counted:
                    counted_workers.add(worker_id)
                self.state.add_assignment(
                    {
                        "assignment_id": assignment_id,
                        "hit_key": hit["hit_key"],
                        "task_id": task["id"],
                        "worker_id": worker_id,
                        "label": label,
                        "gold_label": gold["label"],
                        "gold_answer": gold_answer,
                        "gold_ok": int(gold_ok),
                        "counted": int(counted),
                        "accepted_at": _epoch(remote.get("AcceptTime")),
                        "submitted_at": _epoch(remote.get("SubmitTime")),
                        "collected_at": self.clock(),
                    }
                )
                summary.collected += 1
                if gold_ok and self.settings.bonus_cents:
                    token = T.request_token("bonus", self.state.path, assignment_id)
                    self.state.add_bonus(
                        token, assignment_id, worker_id, task["id"], self.settings.bonus_cents
                    )
                    self._fresh_bonuses.add(token)
                known = self.state.assignment(assignment_id)
            assert known is not None
            status = remote.get("AssignmentStatus", "Submitted")
            if known["review"] is None and (self.settings.auto_review or status != "Submitted"):
                self._review(known, status)

    def _review(
        self, assignment: Row, status: str, *, approve: bool | None = None, feedback: str | None = None
    ) -> None:
        """Approve or reject (with feedback) a collected assignment; queue its notice.

        The policy (``approve=None``): approve complete answers, reject incomplete ones
        (and wrong gold with MATCH_CROWD_REJECT_FAILED_GOLD); a person reviewing may decide
        otherwise with ``approve`` and their own ``feedback``.
        """
        assignment_id = assignment["assignment_id"]
        gold_ok = bool(assignment["gold_ok"])
        complete = assignment["label"] is not None and assignment["gold_answer"] is not None
        reject = not complete or (self.settings.reject_failed_gold and not gold_ok)
        if approve is not None:
            reject = not approve
        if feedback is None:
            if not complete:
                feedback = "Not every pair was answered, so this assignment was rejected."
            elif gold_ok:
                feedback = (
                    "Thank you. You answered the check pair right, so your answer counts and a bonus of "
                    f"${T.dollars(self.settings.bonus_cents)} is on its way."
                )
            else:
                feedback = (
                    f'Thank you. The check pair\'s known answer was "{assignment["gold_label"]}", so your '
                    "answer was not counted and no bonus was paid."
                )
        if status == "Submitted":
            try:
                operation = "RejectAssignment" if reject else "ApproveAssignment"
                self.turk.call(operation, AssignmentId=assignment_id, RequesterFeedback=feedback)
            except TurkRequestError as exc:
                # Already approved/rejected (auto-approval raced us): read back what it is.
                remote = self.turk.call("GetAssignment", AssignmentId=assignment_id)["Assignment"]
                status = remote.get("AssignmentStatus", "")
                if status == "Submitted":
                    raise exc
                reject = status == "Rejected"
        else:
            reject = status == "Rejected"
        self.state.set_review(assignment_id, "rejected" if reject else "approved", feedback)
        if reject and assignment["counted"]:
            self.state.uncount_assignment(assignment_id)  # a rejected answer is not a vote
        self.state.add_notice(
            assignment["worker_id"], "gold_right" if gold_ok else "gold_wrong", assignment_id
        )

    def pending_reviews(self) -> list[Row]:
        """Collected assignments nobody approved or rejected yet (MATCH_CROWD_AUTO_REVIEW=false)."""
        return self.state.assignments(unreviewed=True)

    def review(self, assignment_id: str, *, approve: bool | None = None, feedback: str | None = None) -> str:
        """A person's decision on one assignment (``approve=None``: the automatic policy);
        returns "approved" or "rejected". Bonuses and notices follow on the next sync."""
        with self._lock:
            assignment = self.state.assignment(assignment_id)
            if assignment is None:
                raise NotFound(f"no collected assignment {assignment_id!r}")
            if assignment["review"] is not None:
                raise Conflict(f"assignment {assignment_id} was already {assignment['review']}")
            self._review(assignment, "Submitted", approve=approve, feedback=feedback)
            reviewed = self.state.assignment(assignment_id)
            assert reviewed is not None
            return str(reviewed["review"])

    def _pay_bonuses(self, summary: SyncSummary) -> None:
        """SendBonus for every bonus intent not yet paid (checking first it wasn't)."""
        for bonus in self.state.bonuses(state="intent"):
            assignment = self.state.assignment(bonus["assignment_id"])
            if assignment is None or assignment["review"] != "approved":
                continue
            # An intent from an earlier run may have been paid before that run died: look first.
            paid = bonus["token"] not in self._fresh_bonuses and any(
                p.get("AssignmentId") == bonus["assignment_id"]
                for p in self.turk.bonus_payments(bonus["assignment_id"])
            )
            if not paid:
                amount = bonus["cents"] + T.fee_cents(bonus["cents"])
                if self._available() < amount:
                    raise BudgetExceeded(f"a ${T.dollars(bonus['cents'])} bonus passes the account balance")
                self._balance = self._available() - amount
                try:
                    self.turk.call(
                        "SendBonus",
                        WorkerId=bonus["worker_id"],
                        AssignmentId=bonus["assignment_id"],
                        BonusAmount=T.dollars(bonus["cents"]),
                        UniqueRequestToken=bonus["token"],
                        Reason="You answered the known-answer pair right. Thank you!",
                    )
                except TurkRequestError as exc:
                    if not is_duplicate(exc):
                        raise
                summary.bonuses += 1
            self.state.finish_bonus(bonus["token"])

    def _send_blocks(self, summary: SyncSummary) -> None:
        for worker in self.state.workers():
            if worker["blocked"] and not worker["block_sent"]:
                accuracy = worker["gold_right"] / max(1, worker["gold_total"])
                self.turk.call(
                    "CreateWorkerBlock",
                    WorkerId=worker["worker_id"],
                    Reason=f"Too many wrong answers to known-answer pairs ({accuracy:.0%} right over "
                    f"{worker['gold_total']}).",
                )
                self.state.mark_block_sent(worker["worker_id"])

    def _notify(self) -> None:
        """NotifyWorkers, one message per kind, at most 100 workers a call."""
        pending = self.state.pending_notices()
        messages = {
            "gold_right": (
                "Your answers were counted",
                "You answered the known-answer pair right: your answer counts and a bonus was sent.",
            ),
            "gold_wrong": (
                "Your answer was not counted",
                "You answered a known-answer pair wrong, so that answer was not counted and no bonus "
                "was paid. Please look closely: edited copies of a picture are the same picture.",
            ),
        }
        for kind, (subject, text) in messages.items():
            batch = [n for n in pending if n["kind"] == kind]
            if not batch:
                continue
            self.turk.notify([n["worker_id"] for n in batch], subject, text)
            self.state.mark_notices_sent([n["id"] for n in batch])

    def _extend(self, task: Row, hits: list[Row], summary: SyncSummary) -> None:
        """Ask for one more assignment: extend the latest HIT, or open a new one where
        MTurk forbids growing a HIT made with fewer than 10 assignments to 10 or more."""
        s = self.settings
        latest = hits[-1]
        total = sum(h["max_assignments"] for h in hits)
        count = min(1 if self._estimate(task)[0].get("votes") else 2, s.max_assignments - total)
        if count <= 0:
            return
        expired = latest["expires_at"] is not None and latest["expires_at"] <= self.clock() + 60
        grows_past_rule = latest["max_assignments"] < 10 <= latest["max_assignments"] + count
        if expired or grows_past_rule or latest["state"] != "open":
            self.check_budget(self._hit_commitment(count, count), f"a follow-up HIT for {task['name']}")
            self._new_hit(task, latest["seq"] + 1, count)
        else:
            target = latest["max_assignments"] + count
            self.check_budget(self._hit_commitment(count, target), f"extending {task['name']}")
            token = T.request_token("extend", self.state.path, latest["hit_key"], target)
            self.state.add_extension(token, latest["hit_key"], count, target)
            self.state.spend(
                f"extend:{latest['hit_key']}:{target}",
                "extension",
                self._hit_commitment(count, target),
                task["id"],
            )
            self._extend_call(latest, token, count)
            self.state.finish_extension(token)
            self.state.update_hit(latest["hit_key"], max_assignments=target)
        summary.extended += 1

    def _extend_call(self, hit: Row, token: str, count: int) -> None:
        try:
            self.turk.call(
                "CreateAdditionalAssignmentsForHIT",
                HITId=hit["hit_id"],
                NumberOfAdditionalAssignments=count,
                UniqueRequestToken=token,
            )
        except TurkRequestError as exc:
            if not is_duplicate(exc):
                raise

    # ===== cleanup =================================================================

    def _cleanup(self, summary: SyncSummary) -> None:
        """Expire, review late work on, and delete the HITs of finished tasks."""
        for hit in self.state.hits(states=["open", "expiring"]):
            task = self.state.task_by_id(hit["task_id"])
            if task is None or task["state"] == "processing":
                continue
            complete = len(self.state.assignments(hit_key=hit["hit_key"])) >= hit["max_assignments"]
            if hit["state"] == "open" and not complete:
                self.turk.expire_hit(hit["hit_id"])
                self.state.update_hit(hit["hit_key"], state="expiring")
            if not complete:
                self._collect(task, hit, summary)  # late submissions: reviewed and paid, not counted
            try:
                self.turk.call("DeleteHIT", HITId=hit["hit_id"])
            except TurkRequestError as exc:
                log.info("HIT %s not deletable yet (%s); retrying next sync", hit["hit_id"], exc.message)
                continue
            self._release(hit)
            self.state.update_hit(hit["hit_key"], state="deleted")
            summary.deleted += 1

    def _release(self, hit: Row) -> None:
        """Turn a HIT's worst-case commitment into its actual cost in the ledger."""
        s = self.settings
        assignments = self.state.assignments(hit_key=hit["hit_key"])
        approved = {a["assignment_id"] for a in assignments if a["review"] == "approved"}
        reward = hit["reward_cents"] + T.fee_cents(hit["reward_cents"], hit["max_assignments"])
        bonus_each = s.bonus_cents + T.fee_cents(s.bonus_cents) if s.bonus_cents else 0
        # Bonuses owed stay committed, paid or not yet: a late assignment collected by
        # _cleanup gets its bonus intent in this very pass, and the next pass pays it.
        bonuses = sum(1 for b in self.state.bonuses() if b["assignment_id"] in approved)
        committed = sum(
            r["cents"]
            for r in self.state.ledger()
            if r["ref"] == f"hit:{hit['hit_key']}" or r["ref"].startswith(f"extend:{hit['hit_key']}:")
        )
        actual = len(approved) * reward + bonuses * bonus_each
        self.state.spend(f"release:{hit['hit_key']}", "release", actual - committed, hit["task_id"])


# ===== input checks (pure) ===========================================================


def _check_function(function: str) -> None:
    if function not in FUNCTIONS:
        raise NotFound(f"unknown function {function!r}; known: {', '.join(FUNCTIONS)}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(
            "taskName must be 1-128 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _check_input(body: Any) -> tuple[str, str]:
    """``{"input": {"image1": {"url"}, "image2": {"url"}}}`` -> the two URLs."""
    if not isinstance(body, Mapping) or not isinstance(body.get("input"), Mapping):
        raise BadRequest('the body must be {"input": {"image1": {"url": ...}, "image2": {"url": ...}}}')
    urls = []
    for key in ("image1", "image2"):
        image = body["input"].get(key)
        url = image.get("url") if isinstance(image, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadRequest(f"input.{key}.url must be an http(s) URL")
        if len(url) > T.MAX_URL_LENGTH:
            raise BadRequest(f"input.{key}.url is longer than {T.MAX_URL_LENGTH} characters")
        urls.append(url)
    return urls[0], urls[1]


def _match_fields(item: Any) -> tuple[str, float | None, Mapping[str, Any]]:
    if isinstance(item, Mapping):
        return str(item["filepath"]), item.get("distance"), item.get("metadata") or {}
    return str(item.filepath), float(item.distance), item.metadata or {}


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None
