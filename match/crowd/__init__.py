"""Crowd verification: people confirm what the signatures found.

The requester side (this package's modules, one concept each):

* :mod:`match.crowd.tasks` — pure: pairs -> HTMLQuestion XML, gold judgement, scores, fees.
* :mod:`match.crowd.aggregate` — pure estimators: MajorityVote, WeightedVote, DawidSkene.
* :mod:`match.crowd.mturk` — the only boto3/botocore importer: one MTurk client for the
  sandbox, production or match's crowd server; errors translated at the boundary.
* :mod:`match.crowd.store` — durable SQLite state (tasks, HITs, votes, workers, ledger).
* :mod:`match.crowd.service` — the orchestration: tasks, gold, bonuses, adjudication,
  extension, expiry, sync, cleanup, budget.
* :mod:`match.crowd.media` — images sent out, kept and served at signed expiring URLs.
* :mod:`match.crowd.report` — statistics, HTML, PNG contact sheet, calibration.
* :mod:`match.crowd.api` (Tasks API blueprint) and :mod:`match.crowd.cli` (``match crowd``).

The worker side is match's own MTurk-compatible crowd server: :mod:`match.crowd.server`,
:mod:`match.crowd.server_store` and :mod:`match.crowd.workers` (docs/crowd-server.md).

Nothing is imported here, so ``import match.crowd.tasks`` pulls in neither boto3 nor Flask.
"""

__all__: list[str] = []
