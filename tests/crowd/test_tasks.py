"""Pure task logic: the HTMLQuestion, gold judgement, scores, tokens, fees; plus parse_answer."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from match.crowd import tasks as T
from match.crowd.mturk import parse_answer
from match.crowd.server_store import build_answer_xml, question_html
from match.crowd.workers import parse_question_form


def pairs() -> list[T.Pair]:
    return [
        T.Pair(
            T.pair_id("p", "http://a/1.jpg", "http://b/1.jpg"), "http://a/1.jpg", "http://b/1.jpg?x=1&y=]]>"
        ),
        T.Pair(T.pair_id("p", "http://g/1.jpg", "http://g/2.jpg"), "http://g/1.jpg", "http://g/2.jpg"),
    ]


def test_question_is_valid_xml_under_64kb_and_follows_the_form_convention() -> None:
    xml = T.question_xml(pairs())
    assert len(xml.encode()) < T.MAX_QUESTION_BYTES
    root = ElementTree.fromstring(xml)
    assert root.tag.endswith("HTMLQuestion")
    html = question_html(xml)
    assert html is not None and "y=]]&gt;" in html  # escaped, so no "]]>" ends the CDATA early
    form = parse_question_form(html)
    groups = {name: values for name, (values, _key) in form.groups.items()}
    for pair in pairs():
        assert groups["q_" + pair.pair_id] == list(T.LABELS)
        assert form.groups["q_" + pair.pair_id][1] == pair.pair_id


def test_question_refuses_oversize_and_bad_ids() -> None:
    huge = [T.Pair("p-1", "http://a/" + "x" * 70_000, "http://b/1")]
    with pytest.raises(ValueError, match="MTurk accepts less than"):
        T.question_xml(huge)
    with pytest.raises(ValueError, match="pair id"):
        T.question_xml([T.Pair("bad id", "http://a", "http://b")])


def test_gold_is_judged_on_same_or_not() -> None:
    assert T.gold_correct("edited", "same") and T.gold_correct("same", "edited")
    assert T.gold_correct("different", "similar") and not T.gold_correct("different", "same")
    assert not T.gold_correct("same", None)
    with pytest.raises(ValueError, match="same, edited, similar, different"):
        T.gold_accepts("maybe")


def test_scores_and_result() -> None:
    assert [T.LABEL_SCORES[label] for label in T.LABELS] == sorted(T.LABEL_SCORES.values(), reverse=True)
    result = T.result_from_probas({"same": 0.9, "different": 0.1})
    assert result["label"] == "same" and result["match"] is True
    assert result["similarityScore"] == pytest.approx(0.9)
    assert result["confidence"] == pytest.approx(0.9)


def test_tokens_are_deterministic_and_short() -> None:
    token = T.request_token("hit", "/data/crowd.sqlite3", "task1-hit0")
    assert token == T.request_token("hit", "/data/crowd.sqlite3", "task1-hit0")
    assert token != T.request_token("hit", "/data/crowd.sqlite3", "task1-hit1")
    assert len(token) <= 64


def test_fees() -> None:
    assert T.cents("0.05") == 5 and T.dollars(5) == "0.05" and T.dollars(1234) == "12.34"
    assert T.fee_cents(5, 3) == 1  # 20 %, at least a cent
    assert T.fee_cents(100, 9) == 20 and T.fee_cents(100, 10) == 40
    assert T.fee_cents(0) == 0


def test_mock_result_is_immediate_and_deterministic() -> None:
    assert T.mock_result("http://a", "http://a")["similarityScore"] == 1.0
    assert T.mock_result("http://a", "http://b") == T.mock_result("http://a", "http://b")


def test_parse_answer_forces_a_list() -> None:
    one = build_answer_xml([("q_p-1", "same")])
    two = build_answer_xml([("q_p-1", "same"), ("q_p-2", "different")])
    assert parse_answer(one) == {"q_p-1": "same"}
    assert parse_answer(two) == {"q_p-1": "same", "q_p-2": "different"}
    assert T.parse_labels(parse_answer(two), ["p-1", "p-2", "p-3"]) == {
        "p-1": "same",
        "p-2": "different",
        "p-3": None,
    }
