"""Prometheus metrics: what the server counts, and the calls other modules make.

Served at ``/metrics`` (text exposition format) by the API blueprint. The metrics:

``match_http_requests_total{method, route, status}``
    Requests answered, by route template (``/add``; ``<unmatched>`` for unknown paths,
    so a scan of random URLs cannot blow up the label set).
``match_http_request_duration_seconds{method, route}``
    Latency histogram per route, from the first hook to the response.
``match_store_errors_total{error}``
    Store failures seen by the API (``StoreUnavailable`` = 503, ``StoreError`` = 500).
``match_crowd_spend_dollars_total``, ``match_crowd_released_dollars_total``
    Money committed to the crowd (rewards, bonuses, fees), and committed money given
    back; spend so far is the difference. The crowd ledger reports each entry once
    through :func:`crowd_spend`.
``match_crowd_tasks_total{state}``
    Crowd tasks by the state they reached (:func:`crowd_task`).

Under gunicorn every worker is a process with its own counters. ``match serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh temporary directory *before* this module (and
prometheus_client) is imported, so each process writes its samples to files there and
``/metrics`` sums them over all workers (prometheus_client's multiprocess mode); the
files of a dead worker are marked by :func:`mark_process_dead` from gunicorn's
``child_exit`` hook, and the directory is removed when the server stops. Outside
``match serve`` (tests, a WSGI server of your own without the variable) the counters
are per process.
"""

from __future__ import annotations

import os
from decimal import Decimal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "observe_request",
    "store_error",
    "crowd_spend",
    "crowd_task",
    "exposition",
    "mark_process_dead",
]

#: Environment variable naming prometheus_client's multiprocess directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Content type of :func:`exposition`.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Latency buckets, seconds: signing an image takes tens of milliseconds, fetching a
#: URL up to MATCH_FETCH_TIMEOUT x 2.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("match_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram("match_http_request_duration_seconds", "HTTP request latency in seconds.",
                    ["method", "route"], buckets=_BUCKETS)
STORE_ERRORS = Counter("match_store_errors_total", "Store failures seen by the API.", ["error"])
CROWD_SPEND = Counter("match_crowd_spend_dollars_total",
                      "Money committed to the crowd (rewards, bonuses, fees), US dollars.")
CROWD_RELEASED = Counter("match_crowd_released_dollars_total",
                         "Committed crowd money given back (work not done or rejected), US dollars.")
CROWD_TASKS = Counter("match_crowd_tasks_total", "Crowd tasks by the state they reached.", ["state"])


#: Methods counted under their own name; any other token gunicorn lets through (it
#: accepts any 3-20 upper-case letters) is counted as "other", so a scan of made-up
#: methods can't add series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    method = method if method in _METHODS else "other"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def store_error(error: str) -> None:
    """Count one store failure, by error class name."""
    STORE_ERRORS.labels(error).inc()


def crowd_spend(amount: float | Decimal) -> None:
    """Record a ledger entry of ``amount`` US dollars, once per entry.

    A commitment (> 0) adds to ``match_crowd_spend_dollars_total``; a release (< 0,
    money reserved for work that was never done) to ``match_crowd_released_dollars_total``,
    so spend so far is the difference.
    """
    value = float(amount)
    if value >= 0:
        CROWD_SPEND.inc(value)
    else:
        CROWD_RELEASED.inc(-value)


def crowd_task(state: str, count: int = 1) -> None:
    """Count ``count`` crowd tasks reaching ``state`` (e.g. created, completed, failed)."""
    CROWD_TASKS.labels(state).inc(count)


def exposition() -> bytes:
    """The metrics in Prometheus' text format: summed over workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (gunicorn's child_exit); no-op otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
