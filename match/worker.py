"""The gunicorn worker ``match serve`` runs: gunicorn's sync worker, with JSON errors.

gunicorn answers requests it cannot parse (a request line over ``limit_request_line``,
too many or too large headers, an invalid header or method) itself, before the app
sees them, with a small HTML page. match promises the JSON envelope for every
response, so :class:`Worker` writes the same statuses as gunicorn (400, 431 for
headers, 403, 501 for an unsupported transfer coding) with the envelope instead. A
failure that is not about the request is still a 500, logged with its traceback and
answered with a generic message.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import http, util
from gunicorn.workers.sync import SyncWorker

from match.api.errors import envelope

__all__ = ["Worker", "protocol_error"]

_BAD_REQUEST = (
    http.errors.InvalidRequestLine, http.errors.InvalidRequestMethod, http.errors.InvalidHTTPVersion,
    http.errors.InvalidHeader, http.errors.InvalidHeaderName, http.errors.LimitRequestLine,
    http.errors.InvalidProxyLine, http.errors.InvalidSchemeHeaders, http.errors.ObsoleteFolding,
)


def protocol_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, reason, message) gunicorn would answer ``exc`` with, minus the HTML."""
    if isinstance(exc, http.errors.LimitRequestHeaders):
        return 431, "Request Header Fields Too Large", f"request headers are too large: {exc}"
    if isinstance(exc, http.errors.UnsupportedTransferCoding):
        return 501, "Not Implemented", f"unsupported transfer coding: {exc}"
    if isinstance(exc, http.errors.ForbiddenProxyRequest):
        return 403, "Forbidden", "request forbidden"
    if isinstance(exc, http.errors.LimitRequestLine):
        return 400, "Bad Request", (f"the request line is too long ({exc}); send long fields such as "
                                    "filepath in the body instead of the query string")
    if isinstance(exc, _BAD_REQUEST):
        return 400, "Bad Request", f"malformed HTTP request: {exc}"
    return 500, "Internal Server Error", "internal server error; the server log has the details"


class Worker(SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker; protocol errors are answered with the JSON envelope."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, reason, message = protocol_error(exc)
        address = (addr or ("", -1))[0]
        if status == 500:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        else:
            self.log.warning("Invalid request from ip=%s: %s", address, exc)
        body = json.dumps(envelope("", errors=[message])).encode("utf-8")
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(client, head + body)
        except Exception:  # noqa: BLE001 - the client may be gone; nothing left to tell it
            self.log.debug("Failed to send error message.")
