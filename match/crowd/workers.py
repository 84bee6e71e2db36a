"""Simulated workers for match's crowd server: dry runs and tests without people.

A :class:`SimulatedCrowd` attaches to a :class:`~match.crowd.server_store.CrowdStore`
and works the way a person does on the worker pages: it lists the HITs a worker may
accept, accepts one, reads the HIT's HTMLQuestion, fills in its form and submits it
through :meth:`CrowdStore.submit_assignment`, the very call behind
``/mturk/externalSubmit``, so the requester gets the same ``QuestionFormAnswers``
XML from a simulated worker as from a person.

What a question form must look like for a simulated worker to answer it (the
convention the requester side emits; docs/crowd-server.md has an example):

* each question is a group of radio buttons sharing a ``name`` (by default
  ``q_<pair key>``, :attr:`SimulationSettings.field_prefix`), one per label, with the
  labels as values: ``same``, ``edited``, ``similar``, ``different`` (a group may offer
  fewer);
* each radio button of a group carries ``data-pair="<pair key>"``; without it the key
  is the name less the prefix;
* any other named ``input`` (hidden, text ...), ``textarea`` or ``select`` is posted
  with its value, as a browser posts it (checkboxes only when ``checked``).

The truth comes from an *oracle*, ``oracle(pair_key, html) -> label | None`` (a mapping
from pair key to label works too; so does ``truth=FILE``, a JSON object, in the
settings). A question the oracle can't answer gets a random label.

Worker behaviour (:class:`SimulationSettings`): an honest worker gives the true label
with probability ``accuracy``; otherwise a wrong label, drawn with weight
``1 + bias * position`` where ``position`` is +1 for ``same``, +1/3 ``edited``, -1/3
``similar``, -1 ``different`` (``bias`` > 0 errs toward "same", < 0 toward
"different"), and with ``errors=adjacent`` also by ``1 / steps apart on the scale`` (people
confuse "same" with "edited" more often than with "different"; the default, ``uniform``,
doesn't). A share ``spammers`` of the workers answer at random. ``latency`` is the
mean time (exponential) from accepting to submitting, and with probability
``no_shows`` a worker accepts and never submits, so the assignment is abandoned when
its duration runs out, as on MTurk.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from match.crowd.server_store import CrowdStore, WorkerError, question_html

__all__ = [
    "LABELS",
    "Oracle",
    "QuestionForm",
    "SimulatedCrowd",
    "SimulatedWorker",
    "SimulationSettings",
    "parse_question_form",
]

log = logging.getLogger(__name__)

LABELS = ("same", "edited", "similar", "different")
_POSITION = {"same": 1.0, "edited": 1 / 3, "similar": -1 / 3, "different": -1.0}

Oracle = Callable[[str, str], str | None]


@dataclass(frozen=True)
class SimulationSettings:
    """How the simulated crowd behaves; :meth:`parse` reads ``"accuracy=0.7,spammers=0.2"``."""

    workers: int = 10
    accuracy: float = 0.8
    bias: float = 0.0
    spammers: float = 0.0
    latency: float = 5.0
    no_shows: float = 0.0
    seed: int | None = None
    interval: float = 1.0
    field_prefix: str = "q_"
    truth: str | None = None
    errors: str = "uniform"

    def __post_init__(self) -> None:
        if self.errors not in ("uniform", "adjacent"):
            raise ValueError("errors must be 'uniform' or 'adjacent'")
        for name in ("accuracy", "spammers", "no_shows"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not -1.0 <= self.bias <= 1.0:
            raise ValueError("bias must be between -1 and 1 (or 'same' / 'different')")
        if self.workers < 1 or self.latency < 0 or self.interval <= 0:
            raise ValueError("workers must be at least 1, latency at least 0 and interval more than 0")

    @classmethod
    def parse(cls, spec: str) -> SimulationSettings:
        """Settings from ``key=value`` pairs separated by commas; ``bias`` also takes
        ``same`` (1) or ``different`` (-1). ``ValueError`` for an unknown key or bad value."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or key not in types:
                raise ValueError(f"unknown simulation setting {item!r}; known: {', '.join(types)}")
            if key == "bias" and raw in ("same", "different"):
                values[key] = 1.0 if raw == "same" else -1.0
            elif key in ("workers", "seed"):
                values[key] = int(raw)
            elif key in ("field_prefix", "truth", "errors"):
                values[key] = raw
            else:
                values[key] = float(raw)
        return cls(**values)


@dataclass
class QuestionForm:
    """The fields of an HTML question form in document order.

    ``fields`` holds ``(name, value)`` for plain fields and ``(name, None)`` where a
    radio group sits; ``groups`` maps each radio group's name to its values and pair key.
    """

    fields: list[tuple[str, str | None]] = field(default_factory=list)
    groups: dict[str, tuple[list[str], str]] = field(default_factory=dict)


class _FormParser(HTMLParser):
    """Collects what a browser would post from an HTML form (see :class:`QuestionForm`)."""

    def __init__(self, prefix: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form = QuestionForm()
        self._prefix = prefix
        self._text_name: str | None = None
        self._text: list[str] = []
        self._select: str | None = None
        self._select_value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        name = attr.get("name")
        if tag == "input" and name:
            kind = attr.get("type", "text").lower()
            if kind == "radio":
                if name not in self.form.groups:
                    default_key = name.removeprefix(self._prefix)
                    self.form.groups[name] = ([], attr.get("data-pair", default_key))
                    self.form.fields.append((name, None))
                values = self.form.groups[name][0]
                values.append(attr.get("value", "on"))
                if "data-pair" in attr:
                    self.form.groups[name] = (values, attr["data-pair"])
            elif kind == "checkbox":
                if "checked" in attr:
                    self.form.fields.append((name, attr.get("value", "on")))
            elif kind not in ("submit", "button", "image", "reset", "file"):
                self.form.fields.append((name, attr.get("value", "")))
        elif tag == "textarea" and name:
            self._text_name, self._text = name, []
        elif tag == "select" and name:
            self._select, self._select_value = name, None
        elif (
            tag == "option"
            and self._select is not None
            and (self._select_value is None or "selected" in attr)
        ):
            self._select_value = attr.get("value", "")

    def handle_data(self, data: str) -> None:
        if self._text_name is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._text_name is not None:
            self.form.fields.append((self._text_name, "".join(self._text)))
            self._text_name = None
        elif tag == "select" and self._select is not None:
            self.form.fields.append((self._select, self._select_value or ""))
            self._select = None


def parse_question_form(html: str, field_prefix: str = "q_") -> QuestionForm:
    """The form fields of an HTMLQuestion's HTML, as a simulated worker sees them."""
    parser = _FormParser(field_prefix)
    parser.feed(html)
    parser.close()
    return parser.form


def _as_oracle(oracle: Oracle | Mapping[str, str] | None) -> Oracle:
    if oracle is None:
        return lambda key, html: None
    if isinstance(oracle, Mapping):
        truth = dict(oracle)
        return lambda key, html: truth.get(key)
    return oracle


@dataclass
class SimulatedWorker:
    """One simulated worker: its WorkerId, whether it spams, and its random source."""

    worker_id: str
    spammer: bool
    rng: random.Random

    def choose(self, labels: list[str], truth: str | None, settings: SimulationSettings) -> str:
        """The label this worker gives for a question offering ``labels`` whose truth is ``truth``."""
        if self.spammer or truth is None or truth not in labels:
            return self.rng.choice(labels)
        if self.rng.random() < settings.accuracy:
            return truth
        wrong = [label for label in labels if label != truth]
        if not wrong:
            return truth
        weights = [max(0.0, 1.0 + settings.bias * _POSITION.get(label, 0.0)) for label in wrong]
        if settings.errors == "adjacent" and truth in _POSITION:
            # A confusion is likelier between neighbours on the scale: weight 1 / steps apart.
            weights = [
                weight * 2 / (3 * abs(_POSITION[truth] - _POSITION[label])) if label in _POSITION else weight
                for weight, label in zip(weights, wrong, strict=True)
            ]
        if not any(weights):
            return self.rng.choice(wrong)
        return self.rng.choices(wrong, weights)[0]

    def fill(
        self, html: str, assignment_id: str, oracle: Oracle, settings: SimulationSettings
    ) -> list[tuple[str, str]]:
        """The fields this worker posts for the question ``html``."""
        form = parse_question_form(html, settings.field_prefix)
        posted: list[tuple[str, str]] = []
        for name, value in form.fields:
            if name == "assignmentId":
                posted.append((name, assignment_id))
            elif value is not None:
                posted.append((name, value))
            else:
                labels, key = form.groups[name]
                posted.append((name, self.choose(labels, oracle(key, html), settings)))
        return posted


class SimulatedCrowd:
    """A crowd of simulated workers working on ``store``'s HITs.

    :meth:`run_once` is one round (submit what is due, then every idle worker accepts
    at most one HIT); :meth:`run_until_idle` rounds until nothing moves (tests);
    :meth:`start` and :meth:`stop` run rounds every ``settings.interval`` seconds in a
    background thread (``match crowd server --simulate``). The workers are the store's
    simulated workers, created on first use, so they keep their ids across restarts.
    """

    def __init__(
        self,
        store: CrowdStore,
        settings: SimulationSettings | None = None,
        oracle: Oracle | Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or SimulationSettings()
        if oracle is None and self.settings.truth:
            oracle = json.loads(Path(self.settings.truth).read_text(encoding="utf-8"))
        self.oracle = _as_oracle(oracle)
        self._rng = random.Random(self.settings.seed)
        ids = store.simulated_workers()
        while len(ids) < self.settings.workers:
            ids.append(store.create_worker(f"simulated {len(ids) + 1}", simulated=True).worker_id)
        ids = ids[: self.settings.workers]
        spammers = set(self._rng.sample(ids, round(self.settings.spammers * len(ids))))
        self.workers = [
            SimulatedWorker(worker_id, worker_id in spammers, random.Random(self._rng.getrandbits(64)))
            for worker_id in ids
        ]
        self._pending: dict[str, tuple[float, SimulatedWorker]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _submit_due(self) -> int:
        now = self.store.now()
        submitted = 0
        for assignment_id, (due, worker) in sorted(self._pending.items(), key=lambda item: item[1][0]):
            if due > now:
                continue
            del self._pending[assignment_id]
            try:
                assignment = self.store.worker_assignment(worker.worker_id, assignment_id)
                html = question_html(assignment["Question"])
                if html is None:  # an ExternalQuestion: a simulated worker can't open the requester's site
                    self.store.return_assignment(worker.worker_id, assignment_id)
                    continue
                self.store.submit_assignment(
                    assignment_id, worker.fill(html, assignment_id, self.oracle, self.settings)
                )
                submitted += 1
            except WorkerError:  # abandoned (past its deadline) or the HIT is gone
                continue
        return submitted

    def run_once(self) -> int:
        """One round; the number of assignments accepted and submitted in it."""
        moved = self._submit_due()
        busy = {worker.worker_id for _, worker in self._pending.values()}
        for worker in self._rng.sample(self.workers, len(self.workers)):
            if worker.worker_id in busy:
                continue
            hits = [hit for hit in self.store.available_hits(worker.worker_id) if hit["CanAccept"]]
            if not hits:
                continue
            try:
                assignment_id = self.store.accept_hit(worker.worker_id, hits[0]["HITId"])
            except WorkerError:
                continue
            moved += 1
            if worker.rng.random() < self.settings.no_shows:
                continue
            delay = worker.rng.expovariate(1 / self.settings.latency) if self.settings.latency else 0.0
            self._pending[assignment_id] = (self.store.now() + delay, worker)
        return moved + self._submit_due()

    def run_until_idle(self, max_rounds: int = 10_000) -> int:
        """Run rounds until one moves nothing; the total moved. With ``latency`` > 0 this
        stops while submissions are still due later (advance the clock and call again)."""
        total = 0
        for _ in range(max_rounds):
            moved = self.run_once()
            if not moved:
                break
            total += moved
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval):
            try:
                self.run_once()
            except Exception:  # keep simulating: one bad round must not end the dry run
                log.exception("simulated crowd: a round failed")

    def start(self) -> None:
        """Run rounds in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="simulated-crowd", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and wait for its round to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, math.ceil(self.settings.interval) * 2))
            self._thread = None
