"""The crowd loop over many seeds, next to the best any policy could do with the same votes.

The issue's bar for the crowd loop: with 70 %-accurate workers and 20 % random spammers,
verdicts on 200 labelled pairs at least 97 % right with at most 5 assignments per pair
on average. One seeded run of 200 pairs is one draw; this script measures the spread::

    python -m bench.crowd_loop                      # 10 seeds, 200 pairs each
    python -m bench.crowd_loop --seeds 20 --set MATCH_CROWD_MAX_ASSIGNMENTS=15
    python -m bench.crowd_loop --smoke              # CI: 1 seed, 40 pairs

1. **The loop**: ``match crowd simulate`` (the real service, boto3, match's crowd server
   on loopback, simulated workers), once per seed in a subprocess; per seed the share of
   verdicts right, assignments per pair and spammers blocked, then the median and the
   range. ``--set NAME=VALUE`` passes settings (``MATCH_CROWD_CONFIDENCE``,
   ``MATCH_CROWD_MAX_ASSIGNMENTS``...) through the environment.

2. **The bound**: the same decision made by an exact Bayes policy that knows every
   worker's accuracy and meets **no spammers at all**, simulated directly (pure Python,
   no I/O). A pair's truth is uniform over the four labels; a worker gives the true
   label with probability ``accuracy`` and each other label with ``(1 - accuracy) / 3``;
   the gold pair is passed (the vote counts) with the probability of being right about
   same-or-not; the policy starts with ``--start`` assignments, adds one at a time until
   P(verdict) >= ``--confidence``, up to ``--max``. Spammers and estimated (rather than
   known) accuracies can only make the real loop do worse than this at the same
   settings, so it shows how far any tuning of the stopping rule can go.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

LABELS = ("same", "edited", "similar", "different")
MATCH_LABELS = frozenset({"same", "edited"})


# --- the bound --------------------------------------------------------------------------


def p_match(votes: Sequence[str], accuracy: float) -> float:
    """P(same or edited | votes) under the one-coin model with a uniform prior."""
    logs = dict.fromkeys(LABELS, 0.0)
    for vote in votes:
        for label in LABELS:
            logs[label] += math.log(accuracy if label == vote else (1 - accuracy) / 3)
    top = max(logs.values())
    weights = {label: math.exp(value - top) for label, value in logs.items()}
    return sum(weights[label] for label in MATCH_LABELS) / sum(weights.values())


@dataclass(frozen=True)
class Outcome:
    right: float
    assignments_per_pair: float


def bound(*, accuracy: float, confidence: float, start: int, most: int, pairs: int,
          seed: int = 1) -> Outcome:
    """The exact Bayes policy with known accuracy and no spammers (see the docstring)."""
    rng = random.Random(seed)
    gold_pass = accuracy + (1 - accuracy) / 3  # right about same-or-not
    right = assignments = 0
    for _ in range(pairs):
        truth = rng.choice(LABELS)
        votes: list[str] = []
        taken = 0
        while True:
            for _ in range(start if taken == 0 else 1):
                taken += 1
                vote = truth if rng.random() < accuracy else rng.choice([x for x in LABELS if x != truth])
                if rng.random() < gold_pass:
                    votes.append(vote)
            p = p_match(votes, accuracy) if votes else 0.5
            if max(p, 1 - p) >= confidence or taken >= most:
                break
        right += (p >= 0.5) == (truth in MATCH_LABELS)
        assignments += taken
    return Outcome(right / pairs, assignments / pairs)


# --- the loop ---------------------------------------------------------------------------


def run_loop(seed: int, *, pairs: int, workers: int, accuracy: float, spammers: float,
             settings: dict[str, str]) -> dict[str, object]:
    """One ``match crowd simulate`` run; its JSON figures."""
    spec = f"workers={workers},accuracy={accuracy},spammers={spammers},latency=0,seed={seed}"
    result = subprocess.run(
        [sys.executable, "-m", "match", "crowd", "simulate", "--simulate", spec, "--seed", str(seed),
         "--pairs", str(pairs)],
        env={**os.environ, **settings}, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"match crowd simulate failed (seed {seed}):\n{result.stdout}\n{result.stderr}")
    figures: dict[str, object] = json.loads(result.stdout[result.stdout.index("{"):])
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="runs of the loop (seeds 1..N)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=25)
    parser.add_argument("--accuracy", type=float, default=0.7)
    parser.add_argument("--spammers", type=float, default=0.2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a MATCH_CROWD_* setting for the loop (repeatable)")
    parser.add_argument("--bound-pairs", type=int, default=40_000, help="pairs simulated for the bound")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 40 pairs, a small bound (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.pairs, args.bound_pairs = 1, 40, 2_000
    settings = dict(item.split("=", 1) for item in args.set)

    print(f"crowd loop: {args.pairs} pairs, {args.workers} workers, accuracy {args.accuracy}, "
          f"spammers {args.spammers}, settings {settings or 'defaults'}")
    print(f"{'seed':>4}  {'right':>6}  {'assignments/pair':>16}  {'spammers blocked':>16}  {'cost':>8}")
    right: list[float] = []
    per_pair: list[float] = []
    for seed in range(1, args.seeds + 1):
        figures = run_loop(seed, pairs=args.pairs, workers=args.workers, accuracy=args.accuracy,
                           spammers=args.spammers, settings=settings)
        right.append(float(str(figures["accuracy"])))
        per_pair.append(float(str(figures["assignments_per_pair"])))
        print(f"{seed:>4}  {right[-1]:>6.1%}  {per_pair[-1]:>16.2f}  "
              f"{figures['spammers_blocked']!s:>13}/{figures['spammers']!s:<2}  {figures['cost']!s:>8}")
    both = sum(r >= 0.97 and p <= 5.0 for r, p in zip(right, per_pair, strict=True))
    print(f"loop: right median {statistics.median(right):.1%} (range {min(right):.1%}-{max(right):.1%}); "
          f"assignments/pair median {statistics.median(per_pair):.2f} (range {min(per_pair):.2f}-"
          f"{max(per_pair):.2f}); both bars (>= 97 %, <= 5.0) met in {both} of {len(right)} runs")

    start = int(settings.get("MATCH_CROWD_ASSIGNMENTS", 3))
    confidence = float(settings.get("MATCH_CROWD_CONFIDENCE", 0.95))
    print(f"\nbound: exact Bayes with known accuracy {args.accuracy}, no spammers, start {start}, "
          f"{args.bound_pairs} pairs")
    print(f"{'confidence':>10}  {'max':>4}  {'right':>6}  {'assignments/pair':>16}")
    for conf in sorted({confidence, 0.95, 0.97}):
        for most in (9, 15):
            outcome = bound(accuracy=args.accuracy, confidence=conf, start=start, most=most,
                            pairs=args.bound_pairs)
            print(f"{conf:>10.2f}  {most:>4}  {outcome.right:>6.1%}  {outcome.assignments_per_pair:>16.2f}")


if __name__ == "__main__":
    main()
