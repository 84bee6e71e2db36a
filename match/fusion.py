"""One ranked answer from two signals: the Goldberg signature and verified local features.

Pure: lists in, a list out; no store, no request. :func:`match.service.search` gathers
the inputs (signature hits, candidates by visual words, the verification of each) and
calls :func:`fuse`.

The rule, for each stored image (one entry per filepath):

* **Sure by signature**: distance <= ``sure`` (``MATCH_SURE_DISTANCE``). Reported as
  today, no verification needed: a resized, re-compressed or lightly edited copy, and
  flat or tiny images with no keypoints. ``found_by = ("signature",)``.
* **The uncertain band**: ``sure`` < distance <= ``cutoff``. Distinct photos of one
  series or one place sit here as often as real edits do, so the hit is reported only
  when verification confirms it (``found_by = ("signature", "features")``, score as
  today). Only when the stored image has no features yet (an index made before them,
  until ``match reindex``) does the signature decide alone, as it did before; a query
  or a stored image too flat to have keypoints is matched when its signature is sure.
* **Found by features**: any other candidate (beyond the cutoff, or found by visual
  words) that verification confirms: a crop, a border, a rotation, a screenshot.
  ``found_by = ("features",)``; its score is :func:`inlier_score`.
* Anything else is not reported.

Hits are ranked by score, best first (ties by filepath), and cut at ``size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

from match.features import Verification
from match.store.base import Match

__all__ = ["fuse", "inlier_score"]

SIGNATURE = "signature"
FEATURES = "features"


def inlier_score(inliers: int, min_inliers: int) -> float:
    """Score (0-100) of a hit found by features: ``100 * i / (i + min_inliers)``.

    50 at the least number of inliers that confirms a hit, 75 at three times that,
    90 at nine times: more geometric evidence, higher score; never 100.
    """
    return 100.0 * inliers / (inliers + min_inliers)


def fuse(signature_hits: Sequence[Match], verified: Mapping[str, Verification],
         distances: Mapping[str, float], metadata: Mapping[str, Mapping[str, object]], *,
         unverifiable: Set[str], sure: float, cutoff: float, min_inliers: int,
         size: int) -> list[Match]:
    """The reported hits (see the module docstring).

    ``signature_hits`` are the nearest signatures (any distance, nearest first);
    ``verified`` the candidates that verification confirmed; ``distances`` the
    signature distance of confirmed candidates that are not among ``signature_hits``
    (when known); ``metadata`` theirs; ``unverifiable`` the stored images that have
    no features to verify with (not backfilled yet).
    """
    hits: dict[str, Match] = {}
    sure = min(sure, cutoff)
    for hit in signature_hits:
        if hit.filepath in hits:
            continue
        check = verified.get(hit.filepath)
        if hit.distance <= sure:
            hits[hit.filepath] = _with(hit, check, (SIGNATURE, FEATURES) if check else (SIGNATURE,))
        elif hit.distance <= cutoff:
            if check is not None:
                hits[hit.filepath] = _with(hit, check, (SIGNATURE, FEATURES))
            elif hit.filepath in unverifiable:
                hits[hit.filepath] = hit
        elif check is not None:
            hits[hit.filepath] = _with(hit, check, (FEATURES,),
                                       inlier_score(check.inliers, min_inliers))
    for filepath, check in verified.items():
        if filepath in hits:
            continue
        distance = distances.get(filepath)
        hits[filepath] = Match(filepath, 1.0 if distance is None else distance,
                               metadata.get(filepath, {}), inliers=check.inliers,
                               region=check.region, found_by=(FEATURES,),
                               reported_score=inlier_score(check.inliers, min_inliers))
    ranked = sorted(hits.values(), key=lambda hit: (-hit.score, hit.filepath))
    return ranked[:size]


def _with(hit: Match, check: Verification | None, found_by: tuple[str, ...],
          score: float | None = None) -> Match:
    return Match(hit.filepath, hit.distance, hit.metadata,
                 inliers=None if check is None else check.inliers,
                 region=None if check is None else check.region, found_by=found_by,
                 reported_score=score)

