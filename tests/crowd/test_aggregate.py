"""Aggregators on toy tables, crowd-kit style: shared data, every estimator, expected labels."""

from __future__ import annotations

import random

import numpy as np
import pytest

from match.crowd.aggregate import DawidSkene, MajorityVote, WeightedVote, votes_from
from match.crowd.tasks import LABELS

#: crowd-kit's toy shape: (task, worker, label); w3 is a contrarian, t3 is a tie.
TOY = [
    ("t1", "w1", "same"),
    ("t1", "w2", "same"),
    ("t1", "w3", "different"),
    ("t2", "w1", "different"),
    ("t2", "w2", "different"),
    ("t2", "w3", "same"),
    ("t3", "w1", "similar"),
    ("t3", "w3", "different"),
    ("t4", "w1", "edited"),
    ("t4", "w2", "edited"),
    ("t4", "w3", "edited"),
]


@pytest.mark.parametrize(
    "estimator", [MajorityVote(), WeightedVote(), DawidSkene()], ids=lambda e: type(e).__name__
)
def test_toy_labels(estimator: object) -> None:
    labels = estimator.fit_predict(TOY)  # type: ignore[attr-defined]
    assert labels["t1"] == "same"
    assert labels["t2"] == "different"
    assert labels["t4"] == "edited"
    probas = estimator.probas_  # type: ignore[attr-defined]
    for task, p in probas.items():
        assert sum(p.values()) == pytest.approx(1.0), task


def test_majority_tie_goes_to_earlier_label() -> None:
    assert MajorityVote().fit_predict(TOY)["t3"] == "similar"
    assert MajorityVote().fit(TOY).skills_["w3"] == pytest.approx(1 / 4)


def test_weighted_vote_trusts_the_skilled() -> None:
    votes = [("t", "good", "same"), ("t", "spam1", "different"), ("t", "spam2", "different")]
    skills = {"good": 0.95, "spam1": 0.3, "spam2": 0.3}
    model = WeightedVote(skills=skills).fit(votes)
    assert model.labels_["t"] == "same"
    # one-coin posterior: odds of "same" vs "different" = (0.95*3/0.05) / (0.3*3/0.7)^2
    odds = (0.95 * 3 / 0.05) / (0.3 * 3 / 0.7) ** 2
    p = model.probas_["t"]
    assert p["same"] / p["different"] == pytest.approx(odds, rel=1e-6)


def test_input_shapes_agree() -> None:
    as_dicts = [{"task": t, "worker": w, "label": label} for t, w, label in TOY]
    assert votes_from(as_dicts) == TOY
    assert MajorityVote().fit_predict(as_dicts) == MajorityVote().fit_predict(TOY)


def test_unknown_label_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="not in labels"):
        MajorityVote(labels=["same", "different"]).fit([("t", "w", "maybe")])


def test_dawid_skene_beats_majority_with_a_biased_crowd() -> None:
    """Three workers always say "same"; two good ones say the truth. DS learns who is who."""
    rng = random.Random(3)
    truth = {f"t{i}": rng.choice(["same", "different"]) for i in range(60)}
    votes = []
    for task, label in truth.items():
        votes += [(task, f"lazy{k}", "same") for k in range(3)]
        votes += [(task, f"good{k}", label if rng.random() < 0.9 else rng.choice(LABELS)) for k in range(2)]
    mv = MajorityVote().fit_predict(votes)
    ds = DawidSkene(labels=LABELS).fit(votes)
    mv_right = sum(mv[t] == label for t, label in truth.items())
    ds_right = sum(ds.labels_[t] == label for t, label in truth.items())
    assert ds_right > mv_right
    assert ds_right >= 0.85 * len(truth)
    assert ds.errors_["lazy0"].shape == (len(LABELS), len(LABELS))
    assert np.allclose(ds.errors_["good0"].sum(axis=1), 1.0)
    assert ds.loss_history_ and ds.loss_history_[-1] >= ds.loss_history_[0]


def test_empty_table() -> None:
    assert DawidSkene().fit_predict([]) == {}
    assert MajorityVote().fit_predict([]) == {}
