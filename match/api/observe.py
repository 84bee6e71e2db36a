"""Per-request observability: one JSON access-log line and the request metrics.

Hooks on the whole app (every blueprint, and unknown routes), so the UI and the crowd
API are logged and counted too. The access line is JSON with these keys::

    {"ts": "2026-01-01T12:00:00.123Z", "method": "POST", "path": "/add", "route": "/add",
     "status": 200, "duration_ms": 41.7, "bytes": 61, "remote_addr": "127.0.0.1",
     "key": "key#2"}

``path`` never includes the query string (it may carry a signature or a token), and
``key`` is the API key's position in the configuration, never the key; headers are not
logged at all. Lines go to the ``match.access`` logger; ``match serve`` prints them on
stdout (in place of gunicorn's own access log).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from flask import Flask, Response, current_app, g, request

from match import metrics

__all__ = ["ACCESS_LOGGER", "init_app"]

#: Name of the logger the access lines go to.
ACCESS_LOGGER = "match.access"

access_log = logging.getLogger(ACCESS_LOGGER)


def _start() -> None:
    g.match_started = time.perf_counter()


def _finish(response: Response) -> Response:
    started = g.get("match_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    metrics.observe_request(request.method, route, response.status_code, seconds)
    if current_app.config.get("MATCH_ACCESS_LOG", True) and access_log.isEnabledFor(logging.INFO):
        length = response.content_length
        line = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000.0, 1),
            "bytes": length if length is not None else 0,
            "remote_addr": request.remote_addr or "",
        }
        key = g.get("api_key")
        if key:
            line["key"] = key
        access_log.info(json.dumps(line, ensure_ascii=False))
    return response


def init_app(app: Flask) -> None:
    """Time, count and (with MATCH_ACCESS_LOG) log every request of ``app``."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    if access_log.level == logging.NOTSET:
        access_log.setLevel(logging.INFO)
