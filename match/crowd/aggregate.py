"""Aggregators: small, pure estimators over a long task/worker/label table.

The input is the shape crowd-kit uses, one row per vote::

    [(task, worker, label), ...]        # e.g. ("t-1a2b...", "A3W...", "same")

given as a list of tuples, or any table with ``task``, ``worker`` and ``label`` columns
(a pandas DataFrame works, pandas is not needed). Every estimator has ``fit(data)``
returning itself and ``fit_predict(data)`` returning ``labels_``; learned attributes end
in ``_`` as in crowd-kit (``labels_``, ``probas_``, ``skills_``, ``errors_``), so
``crowdkit.aggregation.DawidSkene`` can be dropped in where it is installed.

* :class:`MajorityVote` — the most frequent label per task (ties go to the earlier label
  of ``labels``).
* :class:`WeightedVote` — the one-coin model: worker *w* is right with probability
  ``skills[w]`` and otherwise picks one of the other labels uniformly; the posterior over
  labels is exact given the skills. This is what match uses online, with skills taken
  from each worker's gold answers, to decide when a task is confident.
* :class:`DawidSkene` — full confusion matrix per worker, fitted by EM (Dawid, A. P. and
  Skene, A. M. (1979) "Maximum Likelihood Estimation of Observer Error-Rates Using the
  EM Algorithm", *Journal of the Royal Statistical Society C* 28(1), 20-28), started from
  majority vote. Used offline by the report to re-check the verdicts.

Example::

    >>> votes = [("t1", "w1", "same"), ("t1", "w2", "same"), ("t1", "w3", "different")]
    >>> MajorityVote().fit_predict(votes)
    {'t1': 'same'}
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from match.crowd.tasks import LABELS

__all__ = ["Vote", "MajorityVote", "WeightedVote", "DawidSkene", "votes_from"]

Vote = tuple[Hashable, Hashable, str]


def votes_from(data: Any) -> list[Vote]:
    """Normalise ``data`` to a list of (task, worker, label) tuples.

    Accepts an iterable of 3-tuples or of mappings with ``task``/``worker``/``label``
    keys, or a table with those columns (anything with ``itertuples``).
    """
    if hasattr(data, "itertuples") and hasattr(data, "columns"):
        return [(row[0], row[1], row[2]) for row in data[["task", "worker", "label"]].itertuples(index=False)]
    rows: list[Vote] = []
    for row in data:
        if isinstance(row, Mapping):
            rows.append((row["task"], row["worker"], row["label"]))
        else:
            task, worker, label = row
            rows.append((task, worker, label))
    return rows


def _label_space(votes: Sequence[Vote], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        known = list(labels)
        unknown = {label for _, _, label in votes} - set(known)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not in labels={known}")
        return known
    seen = {label for _, _, label in votes}
    ordered = [label for label in LABELS if label in seen]
    return ordered + sorted(seen - set(ordered), key=str)


def _normalise(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        return {label: 1.0 / len(weights) for label in weights}
    return {label: value / total for label, value in weights.items()}


def _argmax(probas: Mapping[str, float], order: Sequence[str]) -> str:
    return max(order, key=lambda label: (probas.get(label, 0.0), -order.index(label)))


@dataclass
class MajorityVote:
    """The most frequent label of each task.

    Attributes:
        labels: the label space and tie-break order (default: :data:`LABELS` order of
            the labels seen).
        labels_: task -> label (after ``fit``).
        probas_: task -> {label: share of the votes}.
        skills_: worker -> share of their votes that agree with the majority.
    """

    labels: Sequence[str] | None = None
    labels_: dict[Hashable, str] = field(default_factory=dict, init=False)
    probas_: dict[Hashable, dict[str, float]] = field(default_factory=dict, init=False)
    skills_: dict[Hashable, float] = field(default_factory=dict, init=False)

    def fit(self, data: Any) -> MajorityVote:
        """Count the votes of ``data`` (see :func:`votes_from`)."""
        votes = votes_from(data)
        space = _label_space(votes, self.labels)
        counts: dict[Hashable, dict[str, float]] = {}
        for task, _worker, label in votes:
            counts.setdefault(task, dict.fromkeys(space, 0.0))[label] += 1.0
        self.probas_ = {task: _normalise(c) for task, c in counts.items()}
        self.labels_ = {task: _argmax(p, space) for task, p in self.probas_.items()}
        agree: dict[Hashable, list[int]] = {}
        for task, worker, label in votes:
            agree.setdefault(worker, []).append(int(label == self.labels_[task]))
        self.skills_ = {worker: sum(a) / len(a) for worker, a in agree.items()}
        return self

    def fit_predict(self, data: Any) -> dict[Hashable, str]:
        """``fit`` then return ``labels_``."""
        return self.fit(data).labels_


@dataclass
class WeightedVote:
    """Accuracy-weighted vote under the one-coin model, with an exact posterior.

    A worker with accuracy ``a`` answers the true label with probability ``a`` and each
    of the other K-1 labels with ``(1 - a) / (K - 1)``, so a vote for label l multiplies
    the odds of l by ``a (K-1) / (1-a)``. With ``skills`` given (e.g. from gold answers)
    the posterior is computed directly; without, skills are first estimated as agreement
    with the majority vote.

    Attributes:
        skills: worker -> accuracy in (0, 1); missing workers get ``default_skill``.
        default_skill: accuracy assumed for a worker without a known skill.
        labels: label space (default: :data:`LABELS`).
        prior: label -> prior probability (default: uniform).
        labels_: task -> most probable label.  probas_: task -> {label: posterior}.
        skills_: the skills used, per worker.

    Example::

        >>> wv = WeightedVote(skills={"good": 0.9, "spammer": 0.3})
        >>> wv.fit_predict([("t", "good", "same"), ("t", "spammer", "different")])
        {'t': 'same'}
    """

    skills: Mapping[Hashable, float] | None = None
    default_skill: float = 0.7
    labels: Sequence[str] | None = None
    prior: Mapping[str, float] | None = None
    labels_: dict[Hashable, str] = field(default_factory=dict, init=False)
    probas_: dict[Hashable, dict[str, float]] = field(default_factory=dict, init=False)
    skills_: dict[Hashable, float] = field(default_factory=dict, init=False)

    def fit(self, data: Any) -> WeightedVote:
        """Compute each task's posterior from the votes of ``data``."""
        votes = votes_from(data)
        space = list(self.labels) if self.labels is not None else list(LABELS)
        _label_space(votes, space)
        k = len(space)
        if self.skills is None:
            skills: dict[Hashable, float] = dict(MajorityVote(labels=space).fit(votes).skills_)
        else:
            skills = {worker: float(self.skills.get(worker, self.default_skill)) for _, worker, _ in votes}
        self.skills_ = skills
        prior = _normalise({label: (self.prior or {}).get(label, 1.0) for label in space})
        logs: dict[Hashable, dict[str, float]] = {}
        for task, worker, label in votes:
            row = logs.setdefault(task, {lab: math.log(max(prior[lab], 1e-12)) for lab in space})
            a = min(max(skills.get(worker, self.default_skill), 1e-3), 1 - 1e-3)
            for lab in space:
                row[lab] += math.log(a if lab == label else (1.0 - a) / (k - 1))
        self.probas_ = {}
        for task, row in logs.items():
            top = max(row.values())
            self.probas_[task] = _normalise({lab: math.exp(v - top) for lab, v in row.items()})
        self.labels_ = {task: _argmax(p, space) for task, p in self.probas_.items()}
        return self

    def fit_predict(self, data: Any) -> dict[Hashable, str]:
        """``fit`` then return ``labels_``."""
        return self.fit(data).labels_


@dataclass
class DawidSkene:
    """Dawid-Skene (1979): one confusion matrix per worker, fitted by EM.

    Attributes:
        n_iter: most EM iterations.  tol: stop when the log-likelihood gains less.
        labels: label space (default: the :data:`LABELS` seen, in scale order).
        smoothing: pseudo-count added to every confusion cell (keeps it off zero).
        labels_: task -> label.  probas_: task -> {label: posterior}.
        priors_: label -> prior.  errors_: worker -> K x K array, ``[true, answered]``.
        skills_: worker -> estimated accuracy (prior-weighted diagonal).
        loss_history_: log-likelihood after each iteration.
    """

    n_iter: int = 100
    tol: float = 1e-6
    labels: Sequence[str] | None = None
    smoothing: float = 0.01
    labels_: dict[Hashable, str] = field(default_factory=dict, init=False)
    probas_: dict[Hashable, dict[str, float]] = field(default_factory=dict, init=False)
    priors_: dict[str, float] = field(default_factory=dict, init=False)
    errors_: dict[Hashable, np.ndarray] = field(default_factory=dict, init=False)
    skills_: dict[Hashable, float] = field(default_factory=dict, init=False)
    loss_history_: list[float] = field(default_factory=list, init=False)

    def fit(self, data: Any) -> DawidSkene:
        """Run EM on the votes of ``data`` (see :func:`votes_from`)."""
        votes = votes_from(data)
        space = _label_space(votes, self.labels)
        if not votes:
            self.labels_, self.probas_, self.priors_, self.errors_, self.skills_ = {}, {}, {}, {}, {}
            self.loss_history_ = []
            return self
        tasks = list(dict.fromkeys(task for task, _, _ in votes))
        workers = list(dict.fromkeys(worker for _, worker, _ in votes))
        t_index = {task: i for i, task in enumerate(tasks)}
        w_index = {worker: i for i, worker in enumerate(workers)}
        l_index = {label: i for i, label in enumerate(space)}
        n_t, n_w, k = len(tasks), len(workers), len(space)
        ti = np.array([t_index[t] for t, _, _ in votes])
        wi = np.array([w_index[w] for _, w, _ in votes])
        li = np.array([l_index[label] for _, _, label in votes])

        # E-step start: majority vote shares.
        post = np.zeros((n_t, k))
        np.add.at(post, (ti, li), 1.0)
        post /= post.sum(axis=1, keepdims=True)
        self.loss_history_ = []
        for _ in range(self.n_iter):
            # M-step: priors and confusion matrices [worker, true, answered].
            priors = post.mean(axis=0)
            conf = np.full((n_w, k, k), self.smoothing)
            np.add.at(conf, (wi, slice(None), li), post[ti])  # type: ignore[arg-type]
            conf /= conf.sum(axis=2, keepdims=True)
            # E-step: log posterior of each task's true label.
            log_post = np.tile(np.log(np.maximum(priors, 1e-12)), (n_t, 1))
            np.add.at(log_post, ti, np.log(conf[wi, :, li]))
            top = log_post.max(axis=1, keepdims=True)
            unnorm = np.exp(log_post - top)
            norm = unnorm.sum(axis=1, keepdims=True)
            post = unnorm / norm
            loss = float((np.log(norm) + top).sum())
            if self.loss_history_ and abs(loss - self.loss_history_[-1]) < self.tol:
                self.loss_history_.append(loss)
                break
            self.loss_history_.append(loss)

        self.priors_ = {label: float(p) for label, p in zip(space, priors, strict=True)}
        self.errors_ = {worker: conf[w_index[worker]] for worker in workers}
        self.skills_ = {worker: float((priors * np.diag(conf[w_index[worker]])).sum()) for worker in workers}
        self.probas_ = {
            task: {label: float(post[i, j]) for j, label in enumerate(space)} for task, i in t_index.items()
        }
        self.labels_ = {task: _argmax(p, space) for task, p in self.probas_.items()}
        return self

    def fit_predict(self, data: Any) -> dict[Hashable, str]:
        """``fit`` then return ``labels_``."""
        return self.fit(data).labels_
