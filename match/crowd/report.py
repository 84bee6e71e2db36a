"""What the crowd did and what it cost, and what its verdicts say about the cutoff.

:func:`build_report` gathers one plain dict from the crowd state (no endpoint call)::

    {"totals": {tasks, completed, failed, processing, hits, assignments, counted, dropped,
                workers, blocked, elapsed_seconds, cost_cents, cost_per_verified_pair_cents,
                dawid_skene_agreement},
     "workers": [{worker_id, gold_right, gold_exact, gold_total, accuracy, blocked}, ...],
     "pairs":   [{name, state, image1, image2, labels, votes, similarityScore, label,
                  confidence, distance, cost_cents}, ...]}

and renders it as text (:func:`render_text`, what ``match crowd report`` prints), as an
HTML page with the image pairs side by side (:func:`render_html`, ``GET /crowd/report``)
and as a PNG contact sheet (:func:`contact_sheet`, matplotlib, imported only there).

**Calibration** (:func:`calibrate`, pure): given (signature distance, crowd says same?)
points, find the distance cutoff that best separates same from different (the most
pairs classified right, ties to the larger balanced accuracy), and fit a logistic curve
P(same | distance) whose 0.5 crossing is a second opinion. It answers "what should
``MATCH_CUTOFF`` be?" from human evidence rather than from a default.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from match.crowd import tasks as T
from match.crowd.aggregate import DawidSkene

__all__ = ["build_report", "render_text", "render_html", "contact_sheet", "calibrate", "calibration_points"]


def build_report(crowd: Any) -> dict[str, Any]:
    """The report of a :class:`~match.crowd.service.CrowdService`'s state (see module doc)."""
    state = crowd.state
    tasks = [t for t in state.all_tasks() if t["function"] == "image-similarity"]
    assignments = state.assignments()
    workers = state.workers()
    by_task: dict[int, list[dict[str, Any]]] = {}
    for a in assignments:
        by_task.setdefault(a["task_id"], []).append(a)
    pairs = []
    for task in tasks:
        votes = [a for a in by_task.get(task["id"], []) if a["counted"]]
        result = task.get("result") or {}
        pairs.append(
            {
                "name": task["name"],
                "state": task["state"],
                "deleted": bool(task["deleted"]),
                "image1": task["input"]["image1"]["url"],
                "image2": task["input"]["image2"]["url"],
                "labels": {label: sum(1 for v in votes if v["label"] == label) for label in T.LABELS},
                "votes": len(votes),
                "answers": len(by_task.get(task["id"], [])),
                "similarityScore": result.get("similarityScore"),
                "label": result.get("label"),
                "match": result.get("match"),
                "confidence": result.get("confidence"),
                "distance": task.get("distance"),
                "cost_cents": state.spent(task["id"]),
                "problem": task.get("problem"),
            }
        )
    completed = [t for t in tasks if t["state"] == "completed"]
    starts = [t["created_at"] for t in tasks]
    ends = [t["finished_at"] for t in tasks if t["finished_at"]]
    cost = state.spent()
    table = [(a["task_id"], a["worker_id"], a["label"]) for a in assignments if a["counted"]]
    agreement = None
    if table:
        ds = DawidSkene(labels=T.LABELS).fit(table)
        decided = [t for t in completed if t["id"] in ds.labels_ and t.get("result")]
        if decided:
            agreement = sum(
                T.is_match(ds.labels_[t["id"]]) == bool(t["result"].get("match")) for t in decided
            ) / len(decided)
    totals = {
        "tasks": len(tasks),
        "completed": len(completed),
        "failed": sum(1 for t in tasks if t["state"] == "failed"),
        "processing": sum(1 for t in tasks if t["state"] == "processing"),
        "hits": len(state.hits()),
        "assignments": len(assignments),
        "counted": sum(1 for a in assignments if a["counted"]),
        "dropped": sum(1 for a in assignments if not a["counted"]),
        "workers": len(workers),
        "blocked": sum(1 for w in workers if w["blocked"]),
        "elapsed_seconds": (max(ends) - min(starts)) if starts and ends else 0.0,
        "cost_cents": cost,
        "cost_per_verified_pair_cents": round(cost / len(completed), 2) if completed else None,
        "dawid_skene_agreement": agreement,
    }
    worker_rows = [
        {
            "worker_id": w["worker_id"],
            "gold_right": w["gold_right"],
            "gold_exact": w["gold_exact"],
            "gold_total": w["gold_total"],
            "accuracy": round(w["gold_right"] / w["gold_total"], 3) if w["gold_total"] else None,
            "blocked": bool(w["blocked"]),
        }
        for w in workers
    ]
    return {"totals": totals, "workers": worker_rows, "pairs": pairs}


def _money(cents: float | None) -> str:
    return "-" if cents is None else f"${cents / 100:.2f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def render_text(report: Mapping[str, Any]) -> str:
    """The report as a plain-text statistics table."""
    t = report["totals"]
    elapsed = t["elapsed_seconds"]
    agreement = t["dawid_skene_agreement"]
    lines = [
        "crowd report",
        f"  tasks           {t['tasks']} ({t['completed']} completed, {t['failed']} failed, "
        f"{t['processing']} processing)",
        f"  HITs            {t['hits']}",
        f"  answers         {t['assignments']} ({t['counted']} counted, {t['dropped']} dropped by gold)",
        f"  workers         {t['workers']} ({t['blocked']} blocked)",
        f"  time elapsed    {elapsed / 3600:.2f} h"
        if elapsed >= 3600
        else f"  time elapsed    {elapsed:.0f} s",
        f"  cost            {_money(t['cost_cents'])}",
        f"  per verified    {_money(t['cost_per_verified_pair_cents'])}",
        "  Dawid-Skene     " + ("-" if agreement is None else f"{agreement:.1%} agree with the verdicts"),
        "",
        "gold accuracy per worker",
        f"  {'worker':<32} {'right':>5} {'exact':>5} {'total':>5} {'acc':>6}  blocked",
    ]
    for w in sorted(report["workers"], key=lambda w: (w["accuracy"] or 0, w["worker_id"])):
        acc = "-" if w["accuracy"] is None else f"{w['accuracy']:.0%}"
        lines.append(
            f"  {w['worker_id']:<32} {w['gold_right']:>5} {w['gold_exact']:>5} {w['gold_total']:>5} "
            f"{acc:>6}  {'yes' if w['blocked'] else ''}"
        )
    return "\n".join(lines) + "\n"


def render_html(
    report: Mapping[str, Any], *, url_for_ref: Callable[[str], str] | None = None, limit: int = 200
) -> str:
    """The report as one HTML page: the statistics, the workers, and the pairs side by
    side with their votes and scores (``url_for_ref`` turns ``media:`` refs into URLs)."""
    esc = html.escape
    resolve = url_for_ref or (lambda ref: ref)
    t = report["totals"]
    stats = "".join(
        f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{esc(str(v))}</td></tr>" for k, v in t.items()
    )
    workers = "".join(
        f"<tr><td>{esc(w['worker_id'])}</td><td>{w['gold_right']}/{w['gold_total']}</td>"
        f"<td>{w['gold_exact']}</td><td>{_percent(w['accuracy'])}</td>"
        f"<td>{'blocked' if w['blocked'] else ''}</td></tr>"
        for w in report["workers"]
    )
    rows = []
    for p in list(report["pairs"])[:limit]:
        votes = ", ".join(f"{label} {n}" for label, n in p["labels"].items() if n) or "no counted votes"
        score = "-" if p["similarityScore"] is None else f"{p['similarityScore']:.2f}"
        rows.append(
            f'<tr><td><img src="{esc(resolve(p["image1"]))}" loading="lazy" '
            'referrerpolicy="no-referrer"></td>'
            f'<td><img src="{esc(resolve(p["image2"]))}" loading="lazy" referrerpolicy="no-referrer"></td>'
            f"<td><b>{esc(p['name'])}</b><br>{esc(p['state'])}<br>score {score} "
            f"({esc(str(p['label'] or '-'))}, confidence {esc(str(p['confidence'] or '-'))})"
            f"<br>{esc(votes)}"
            f"<br>{p['answers']} answers, {_money(p['cost_cents'])}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>match crowd report</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;text-align:left;vertical-align:top}}
img{{max-width:260px;max-height:200px}}</style>
</head><body><h1>match crowd report</h1>
<h2>Totals</h2><table>{stats}</table>
<h2>Gold accuracy per worker</h2><table><tr><th>worker</th><th>gold right</th><th>exact</th><th>accuracy</th>
<th></th></tr>{workers}</table>
<h2>Pairs</h2><table>{"".join(rows)}</table></body></html>"""


def contact_sheet(
    report: Mapping[str, Any], load: Callable[[str], bytes | None], *, limit: int = 24
) -> bytes:
    """A PNG contact sheet: each pair's two images side by side with its votes and score.

    ``load(ref)`` returns an image's bytes (or None to draw a placeholder).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    pairs = list(report["pairs"])[:limit] or [None]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(6.4, 2.4 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        for col in range(2):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if pair is None:
                ax.set_axis_off()
                continue
            data = load(pair["image1" if col == 0 else "image2"])
            if data:
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        image.thumbnail((320, 320))
                        ax.imshow(np.asarray(image.convert("RGB")))
                except Exception:  # an undecodable image gets the placeholder
                    ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
            else:
                ax.text(0.5, 0.5, "not available", ha="center", va="center")
            if col == 0:
                votes = " ".join(f"{label[:4]}:{n}" for label, n in pair["labels"].items() if n)
                score = "-" if pair["similarityScore"] is None else f"{pair['similarityScore']:.2f}"
                ax.set_title(
                    f"{pair['name'][:28]}  {pair['state']}  score {score}  {votes}", fontsize=7, loc="left"
                )
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    plt.close(fig)
    return out.getvalue()


# ===== calibration (pure) ===========================================================


def calibration_points(report: Mapping[str, Any]) -> list[tuple[float, bool]]:
    """(signature distance, crowd says same picture) for completed pairs with a distance."""
    return [
        (float(p["distance"]), bool(p["match"]))
        for p in report["pairs"]
        if p["state"] == "completed" and p["distance"] is not None and p["match"] is not None
    ]


def calibrate(points: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """The distance cutoff that best separates crowd-"same" from crowd-"different" pairs.

    ``points`` are (distance in 0..1, same?). The rule is *distance <= cutoff means
    same*; the cutoff maximises pairs classified right (ties: balanced accuracy, then
    the midpoint between neighbouring distances). Also fits P(same | distance) with a
    logistic regression (Newton's method, a tiny ridge so separable data converge) and
    reports where it crosses 0.5. Returns ``{"n", "same", "different", "cutoff",
    "accuracy", "balanced_accuracy", "logistic": {"intercept", "slope", "cutoff"}}``;
    ``cutoff`` is None with fewer than one point of each kind.
    """
    n_same = sum(1 for _, same in points if same)
    n_diff = len(points) - n_same
    out: dict[str, Any] = {
        "n": len(points),
        "same": n_same,
        "different": n_diff,
        "cutoff": None,
        "accuracy": None,
        "balanced_accuracy": None,
        "logistic": None,
    }
    if not n_same or not n_diff:
        return out
    ordered = sorted(points)
    distances = [d for d, _ in ordered]
    midpoints = ((a + b) / 2 for a, b in zip(distances, distances[1:], strict=False) if a != b)
    candidates = sorted({0.0, 1.0, *midpoints})
    best: tuple[float, float, float] | None = None
    for cut in candidates:
        tp = sum(1 for d, s in ordered if s and d <= cut)
        tn = sum(1 for d, s in ordered if not s and d > cut)
        accuracy = (tp + tn) / len(ordered)
        balanced = (tp / n_same + tn / n_diff) / 2
        if best is None or (accuracy, balanced) > (best[1], best[2]):
            best = (cut, accuracy, balanced)
    assert best is not None
    out.update(cutoff=round(best[0], 4), accuracy=round(best[1], 4), balanced_accuracy=round(best[2], 4))
    x = np.array(distances)
    y = np.array([1.0 if s else 0.0 for _, s in ordered])
    w = np.zeros(2)
    design = np.column_stack([np.ones_like(x), x])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(design @ w)))
        gradient = design.T @ (y - p) - 1e-3 * w
        hessian = -(design.T * (p * (1 - p))) @ design - 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    intercept, slope = float(w[0]), float(w[1])
    crossing = -intercept / slope if slope and math.isfinite(-intercept / slope) else None
    out["logistic"] = {
        "intercept": round(intercept, 4),
        "slope": round(slope, 4),
        "cutoff": None if crossing is None else round(min(max(crossing, 0.0), 1.0), 4),
    }
    return out
