"""Pure task logic: image pairs in, HTMLQuestion XML and scores out. No I/O here.

A crowd *task* asks "are these two images the same picture?" about one pair. It is
sent to workers inside a HIT that also carries one **gold** pair (a pair whose answer
we know), in an order derived from the HIT's id so a worker can't tell which is which::

    Pair(pair_id, image1_url, image2_url)  x 2  ->  question_xml()  ->  HTMLQuestion XML
    worker answers {pair_id: label}            ->  gold_correct() / LABEL_SCORES

Workers answer on a four-step scale (:data:`LABELS`), the scale Amazon's
image-similarity function used, each mapped to a ``similarityScore`` in 0..1 by
:data:`LABEL_SCORES`; ``same`` and ``edited`` mean *the same picture* (a match),
``similar`` and ``different`` mean *not the same picture*.

The form follows the convention of match's crowd server (``docs/crowd-server.md``):
one radio group per pair, named ``q_<pair id>``, with the four label values, each radio
carrying ``data-pair="<pair id>"``, so a simulated worker can find each question and a
test oracle can tell the truth of each pair. A pair's id is derived from its two image
references (:func:`pair_id`), the same for a real pair and a gold one, so the form
doesn't tell a worker which pair is the gold.

Also here, because they are small and pure: the deterministic ``UniqueRequestToken``
(:func:`request_token`), MTurk's fee schedule (:func:`fee_cents`) and the mock result of
the ``image-similarity-test`` function.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from xml.etree import ElementTree

__all__ = [
    "FIELD_PREFIX",
    "LABELS",
    "LABEL_SCORES",
    "LABEL_TEXT",
    "MATCH_LABELS",
    "MAX_QUESTION_BYTES",
    "MAX_URL_LENGTH",
    "Pair",
    "cents",
    "dollars",
    "fee_cents",
    "gold_accepts",
    "gold_correct",
    "is_match",
    "mock_result",
    "order_pairs",
    "pair_id",
    "parse_labels",
    "question_xml",
    "request_token",
    "result_from_probas",
]

#: The answer scale, most similar first.
LABELS: tuple[str, ...] = ("same", "edited", "similar", "different")

#: label -> similarityScore in 0..1.
LABEL_SCORES: Mapping[str, float] = {"same": 1.0, "edited": 0.75, "similar": 0.35, "different": 0.0}

#: label -> what the worker reads beside the radio button.
LABEL_TEXT: Mapping[str, str] = {
    "same": "Same picture",
    "edited": "Same picture, edited (cropped, resized, recoloured, text added...)",
    "similar": "Similar, but a different picture (same place or subject, another shot)",
    "different": "Different pictures",
}

#: Labels that mean "the same picture": a match for the search.
MATCH_LABELS = frozenset({"same", "edited"})

#: MTurk's limit on an HTMLQuestion document, in bytes (UTF-8).
MAX_QUESTION_BYTES = 64 * 1024

#: Radio groups are named ``q_<pair id>`` (the crowd server's simulated workers expect it).
FIELD_PREFIX = "q_"

#: Longest image URL a task accepts (Amazon's image-similarity function had the same).
MAX_URL_LENGTH = 400

_HTML_QUESTION_NS = (
    "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
)


@dataclass(frozen=True)
class Pair:
    """One question: two image URLs and the id the form names it by (``[a-z0-9-]``)."""

    pair_id: str
    image1: str
    image2: str


def pair_id(kind: str, *parts: object) -> str:
    """A form-safe, stable id for a pair: ``"<kind>-<12 hex>"`` (kind is "t" or "g")."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def request_token(kind: str, *ids: object) -> str:
    """The UniqueRequestToken for one spend, derived only from our own ids (<= 64 chars).

    The same (kind, ids) always gives the same token, so a retry after a crash is
    recognised by the endpoint as the same request and never creates a second HIT,
    bonus or extension. ``kind`` is a short word (``hit``, ``bonus``, ``extend``).
    """
    digest = hashlib.sha256("\x1f".join([kind, *(str(i) for i in ids)]).encode()).hexdigest()
    return f"match-{kind[:10]}-{digest[:40]}"


def order_pairs(real: Pair, gold: Pair, seed: str) -> list[Pair]:
    """Both pairs in an order fixed by ``seed`` (the HIT key): the gold is first half the time."""
    first_gold = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % 2 == 1
    return [gold, real] if first_gold else [real, gold]


def _pair_html(number: int, pair: Pair) -> str:
    esc = html.escape
    options = "\n".join(
        f'      <label><input type="radio" name="{FIELD_PREFIX}{esc(pair.pair_id)}" value="{label}" '
        f'data-pair="{esc(pair.pair_id)}" required> '
        f"{esc(LABEL_TEXT[label])}</label><br>"
        for label in LABELS
    )
    return f"""  <fieldset class="pair" data-pair="{esc(pair.pair_id)}">
    <legend>Pair {number}</legend>
    <div class="images">
      <img src="{esc(pair.image1)}" alt="image A of pair {number}" referrerpolicy="no-referrer">
      <img src="{esc(pair.image2)}" alt="image B of pair {number}" referrerpolicy="no-referrer">
    </div>
    <div class="answers">
{options}
    </div>
  </fieldset>"""


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
  body {{ font-family: sans-serif; max-width: 1100px; margin: 1em auto; }}
  .images img {{ max-width: 48%; max-height: 420px; margin: 0 0.5%; border: 1px solid #999; }}
  fieldset.pair {{ margin-bottom: 1.5em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{instructions}</p>
<form name="mturk_form" method="post" id="mturk_form" action="https://www.mturk.com/mturk/externalSubmit">
  <input type="hidden" value="" name="assignmentId" id="assignmentId">
{pairs}
  <p><input type="submit" id="submitButton" value="Submit"></p>
</form>
<script>
  // MTurk passes assignmentId and turkSubmitTo in the query string; submit back there.
  (function () {{
    var params = new URLSearchParams(window.location.search);
    var id = params.get("assignmentId") || "";
    document.getElementById("assignmentId").value = id;
    if (params.get("turkSubmitTo")) {{
      document.getElementById("mturk_form").action = params.get("turkSubmitTo") + "/mturk/externalSubmit";
    }}
    if (id === "ASSIGNMENT_ID_NOT_AVAILABLE") {{
      document.getElementById("submitButton").disabled = true;
    }}
  }})();
</script>
</body>
</html>"""

DEFAULT_TITLE = "Are these the same picture?"
DEFAULT_INSTRUCTIONS = (
    "For each pair, say whether the two images are the same picture. A picture that was "
    "cropped, resized, recoloured or had text added is still the same picture (choose "
    "\u201cedited\u201d). Another photo of the same place or subject is \u201csimilar\u201d, not the same. "
    "Some pairs have known answers: answering them right earns a bonus."
)


def question_xml(
    pairs: Sequence[Pair],
    *,
    title: str = DEFAULT_TITLE,
    instructions: str = DEFAULT_INSTRUCTIONS,
    frame_height: int = 0,
) -> str:
    """The HTMLQuestion document for a HIT asking about ``pairs`` (in that order).

    Returns well-formed XML (checked by parsing it) under :data:`MAX_QUESTION_BYTES`;
    raises ValueError otherwise (for instance when the URLs are absurdly long) or when a
    pair id is not form-safe.
    """
    if not pairs:
        raise ValueError("a question needs at least one pair")
    for pair in pairs:
        if not pair.pair_id or not all(c.isalnum() or c in "-_" for c in pair.pair_id):
            raise ValueError(f"pair id must be letters, digits, '-' or '_': {pair.pair_id!r}")
    page = _PAGE.format(
        title=html.escape(title),
        instructions=html.escape(instructions),
        pairs="\n".join(_pair_html(number, pair) for number, pair in enumerate(pairs, start=1)),
    )
    # The HTML goes in a CDATA section; "]]>" can't appear inside one, so split it.
    cdata = page.replace("]]>", "]]]]><![CDATA[>")
    document = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<HTMLQuestion xmlns="{_HTML_QUESTION_NS}">\n'
        f"<HTMLContent><![CDATA[\n{cdata}\n]]></HTMLContent>\n"
        f"<FrameHeight>{int(frame_height)}</FrameHeight>\n"
        f"</HTMLQuestion>"
    )
    size = len(document.encode("utf-8"))
    if size >= MAX_QUESTION_BYTES:
        raise ValueError(f"the HTMLQuestion is {size} bytes; MTurk accepts less than {MAX_QUESTION_BYTES}")
    ElementTree.fromstring(document.encode("utf-8"))  # raises ParseError (a ValueError) if malformed
    return document


def parse_labels(fields: Mapping[str, str], pair_ids: Sequence[str]) -> dict[str, str | None]:
    """The label a worker chose for each pair (None when missing or not on the scale).

    ``fields`` is the answer as ``{QuestionIdentifier: FreeText}`` (see
    :func:`match.crowd.mturk.parse_answer`).
    """
    labels: dict[str, str | None] = {}
    for pid in pair_ids:
        value = (fields.get(FIELD_PREFIX + pid) or "").strip().lower()
        labels[pid] = value if value in LABELS else None
    return labels


def is_match(label: str) -> bool:
    """Whether a label means the same picture (``same`` or ``edited``)."""
    return label in MATCH_LABELS


def gold_accepts(gold_label: str) -> frozenset[str]:
    """The answers counted right for a gold pair whose known answer is ``gold_label``.

    A gold answer is judged on the question the verdict answers, *same picture or not*:
    ``same`` and ``edited`` accept each other (a transformed copy is honestly either),
    and so do ``similar`` and ``different``. A random answerer passes half the time,
    an honest one nearly always; :func:`match.crowd.service.should_block` separates them
    over many answers, and the exact agreement (``gold_exact``) sets a worker's weight.
    """
    if gold_label not in LABELS:
        raise ValueError(f"gold label must be one of {', '.join(LABELS)}; got {gold_label!r}")
    if gold_label in MATCH_LABELS:
        return MATCH_LABELS
    return frozenset(LABELS) - MATCH_LABELS


def gold_correct(gold_label: str, answer: str | None) -> bool:
    """Whether ``answer`` to a gold pair with known ``gold_label`` is right."""
    return answer is not None and answer in gold_accepts(gold_label)


def result_from_probas(probas: Mapping[str, float]) -> dict[str, float | str | bool]:
    """A task result from a posterior over :data:`LABELS`.

    Returns ``{"similarityScore": E[score], "label": most probable label, "match": bool,
    "confidence": P(match) or P(not match), whichever is larger}``; every number in 0..1.
    """
    total = sum(probas.values()) or 1.0
    p = {label: probas.get(label, 0.0) / total for label in LABELS}
    score = sum(p[label] * LABEL_SCORES[label] for label in LABELS)
    p_match = sum(p[label] for label in MATCH_LABELS)
    label = max(LABELS, key=lambda item: (p[item], -LABELS.index(item)))
    return {
        "similarityScore": round(score, 4),
        "label": label,
        "match": p_match >= 0.5,
        "confidence": round(max(p_match, 1.0 - p_match), 4),
    }


def mock_result(image1: str, image2: str) -> dict[str, float | str | bool]:
    """The result of the ``image-similarity-test`` function: immediate and deterministic.

    Identical URLs score 1.0 (same); any other pair gets a fixed score from the URLs'
    hash, so tests can rely on it without any worker.
    """
    if image1 == image2:
        return {"similarityScore": 1.0, "label": "same", "match": True, "confidence": 1.0, "mock": True}
    bucket = int(hashlib.sha256(f"{image1}\x1f{image2}".encode()).hexdigest(), 16) % len(LABELS)
    label = LABELS[bucket]
    return {
        "similarityScore": LABEL_SCORES[label],
        "label": label,
        "match": is_match(label),
        "confidence": 1.0,
        "mock": True,
    }


# --- money ------------------------------------------------------------------------


def cents(amount: str | float | Decimal) -> int:
    """Dollars (``"0.05"``) to integer cents, rounding half up; money is kept in cents."""
    return int((Decimal(str(amount)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def dollars(amount_cents: int) -> str:
    """Integer cents to MTurk's money string: ``5`` -> ``"0.05"``."""
    sign = "-" if amount_cents < 0 else ""
    value = abs(amount_cents)
    return f"{sign}{value // 100}.{value % 100:02d}"


def fee_cents(amount_cents: int, max_assignments: int = 1) -> int:
    """MTurk's commission on one payment of ``amount_cents`` (reward or bonus).

    20 %, or 40 % on the rewards of a HIT with 10 or more assignments; at least one cent.
    Bonuses use ``max_assignments=1`` (always 20 %).
    """
    rate = Decimal("0.40") if max_assignments >= 10 else Decimal("0.20")
    fee = int((Decimal(amount_cents) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(1, fee) if amount_cents > 0 else 0
