"""The one JSON error renderer, and the envelope every API response shares.

Every response, success or failure, is the dsys/match envelope::

    {"status": "ok" | "fail", "error": [<messages>], "method": "<endpoint>", "result": [...]}

Failures come from three places and all land in :func:`render`:

* :class:`match.errors.MatchError` raised anywhere below the views: the status is on
  the class, the message says what to fix.
* werkzeug's :class:`~werkzeug.exceptions.HTTPException` (unknown route 404, wrong
  method 405, body over ``MAX_CONTENT_LENGTH`` 413, malformed multipart 400), which
  would otherwise be an HTML page.
* anything else: a bug. The traceback goes to the server log; the client gets a
  generic 500 envelope without it.

:func:`register` attaches the renderer to the whole app (not only the API blueprint),
because a routing 404 or 405 happens before any blueprint is chosen.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from match import metrics
from match.errors import MatchError, StoreError, StoreUnavailable, Unauthorized

__all__ = ["METHODS", "envelope", "respond", "render", "register"]

log = logging.getLogger(__name__)

#: The API's endpoints, as the envelope's ``method`` names them.
METHODS = ("add", "delete", "search", "compare", "count", "list", "ping", "ready")

#: Endpoints outside the envelope: the OpenAPI description and the Prometheus metrics
#: (their errors still use the envelope, with ``method`` set to these names).
EXTRA_ENDPOINTS = ("openapi", "metrics")

#: Seconds a client is asked to wait before retrying after a 503.
RETRY_AFTER = 5


def envelope(method: str, result: list[Any] | None = None, errors: list[str] | None = None) -> dict[str, Any]:
    """The response body: ``status`` is "fail" exactly when there are errors."""
    return {
        "status": "fail" if errors else "ok",
        "error": list(errors or []),
        "method": method,
        "result": list(result or []),
    }


def respond(method: str, result: list[Any], status: int = 200) -> Response:
    """A success response for ``method``."""
    response = jsonify(envelope(method, result))
    response.status_code = status
    return response


def current_method() -> str:
    """The endpoint the request was for ("" when the route is unknown)."""
    endpoint = request.endpoint or ""
    name = endpoint.rsplit(".", 1)[-1]
    if name in METHODS or name in EXTRA_ENDPOINTS:
        return name
    # A 405 has no endpoint yet; the path still says which method was meant.
    first = request.path.strip("/").split("/", 1)[0]
    return first if first in METHODS else ""


def render(error: BaseException) -> Response:
    """Render any exception as the failure envelope with the right HTTP status."""
    headers: dict[str, str] = {}
    if isinstance(error, MatchError):
        status, message = error.status, error.message
        if status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.path, status,
                        type(error).__name__, message, exc_info=status == 500)
        if isinstance(error, StoreError):
            metrics.store_error(type(error).__name__)
            # The details (cluster URLs, index names, backend errors) are for the log;
            # the client learns what happened and what to do.
            message = (f"the store is unavailable; retry in {RETRY_AFTER} s"
                       if isinstance(error, StoreUnavailable)
                       else "the store failed; the server log has the details")
        if isinstance(error, StoreUnavailable):
            headers["Retry-After"] = str(RETRY_AFTER)
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="match"'

    elif isinstance(error, HTTPException):
        status, message = error.code or 500, _http_message(error)
        if isinstance(error, WerkzeugMethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
    else:
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
        status, message = 500, "internal server error; the server log has the details"
    response = jsonify(envelope(current_method(), errors=[message]))
    response.status_code = status
    response.headers.update(headers)
    return response


def _http_message(error: HTTPException) -> str:
    """A message that says what to fix, for the werkzeug errors clients hit."""
    if isinstance(error, WerkzeugNotFound):
        endpoints = ", ".join(f"/{name}" for name in METHODS)
        return f"no such endpoint {request.path}; the endpoints are {endpoints}"
    if isinstance(error, WerkzeugMethodNotAllowed):
        allowed = ", ".join(m for m in (error.valid_methods or []) if m not in ("HEAD", "OPTIONS"))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and request.content_length is not None and request.content_length <= limit:
            # werkzeug's MAX_FORM_MEMORY_SIZE: large text fields, not a large file
            return ("form fields are too large; send images as files "
                    "(multipart/form-data, e.g. curl -F image=@photo.jpg)")
        return (f"request body is larger than {limit} bytes (MATCH_MAX_UPLOAD_BYTES); "
                "send a smaller image or a url")
    return error.description or error.name


def register(app: Flask) -> None:
    """Route every error of ``app`` through :func:`render`."""
    app.register_error_handler(MatchError, render)
    app.register_error_handler(HTTPException, render)
    app.register_error_handler(Exception, render)
