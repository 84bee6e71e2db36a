"""Every error match raises on purpose, and the HTTP status each one means.

The tree::

    MatchError                      500  base class; never shown with a stack trace
    ├── BadRequest                  400  a field is missing or invalid
    │   └── MissingField            400
    ├── Unauthorized                401  no API key, or an unknown one (MATCH_API_KEYS)
    ├── Forbidden                   403  the key's role may not do this (read-only key)
    ├── NotFound                    404
    ├── MethodNotAllowed            405
    ├── Conflict                    409
    ├── PayloadTooLarge             413  upload or fetched body over the size cap
    │   └── ImageTooLarge           413  too many pixels (decompression bomb guard)
    ├── UnsupportedImage            415  not an image format match can decode
    ├── InvalidImage                422  looks like an image but is truncated or corrupt
    ├── FetchError                  502  a ``url`` could not be fetched
    │   └── FetchTimeout            504
    ├── StoreError                  500  the store failed in a way that is our fault
    │   ├── StoreUnavailable        503  the store did not answer (Elasticsearch down)
    │   └── IncompatibleIndex       500  an existing index has a mapping match can't use
    └── CrowdError                  502  the crowd endpoint (MTurk or match's crowd server)
        ├── BudgetExceeded          402  a spend would pass the configured budget
        └── TurkRequestError        502  the MTurk API refused a request

The status lives on the class (as datasette's ``Base400`` does) and one renderer,
:func:`match.api.errors.render`, turns any of them into the JSON envelope. Third-party
errors (Pillow, sqlite3, elasticsearch, botocore) are translated into these at the
module that imports the third party, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "MatchError",
    "BadRequest",
    "MissingField",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "PayloadTooLarge",
    "ImageTooLarge",
    "UnsupportedImage",
    "InvalidImage",
    "FetchError",
    "FetchTimeout",
    "StoreError",
    "StoreUnavailable",
    "IncompatibleIndex",
    "CrowdError",
    "BudgetExceeded",
    "TurkRequestError",
]


class MatchError(Exception):
    """Base class. ``status`` is the HTTP status the API answers with."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(MatchError):
    """A field is invalid: the message names the field and what is accepted."""

    status = 400


class MissingField(BadRequest):
    """A required field is missing."""

    def __init__(self, field: str, hint: str = "") -> None:
        message = f"missing required field {field!r}"
        if hint:
            message += f": {hint}"
        super().__init__(message)
        self.field = field


class Unauthorized(MatchError):
    """No API key was sent, or not one the server knows (the message never echoes it)."""

    status = 401


class Forbidden(MatchError):
    """A known API key whose role does not allow the request (e.g. ``ro`` on /add)."""

    status = 403


class NotFound(MatchError):
    status = 404


class MethodNotAllowed(MatchError):
    status = 405


class Conflict(MatchError):
    status = 409


class PayloadTooLarge(MatchError):
    status = 413


class ImageTooLarge(PayloadTooLarge):
    """The image has more pixels than ``MATCH_MAX_PIXELS``; refused before decoding."""


class UnsupportedImage(MatchError):
    """The bytes are not an image format match decodes (text, SVG, empty...)."""

    status = 415


class InvalidImage(MatchError):
    """The bytes claim an image format but are truncated or corrupt."""

    status = 422


class FetchError(MatchError):
    """A ``url`` could not be fetched (DNS, refused, HTTP error status)."""

    status = 502


class FetchTimeout(FetchError):
    status = 504


class StoreError(MatchError):
    status = 500


class StoreUnavailable(StoreError):
    """The store did not answer in time; the client may retry later."""

    status = 503


class IncompatibleIndex(StoreError):
    """An existing Elasticsearch index has a mapping match cannot use."""


class CrowdError(MatchError):
    status = 502


class BudgetExceeded(CrowdError):
    """Spending would pass ``MATCH_CROWD_BUDGET``: nothing was created or paid."""

    status = 402


class TurkRequestError(CrowdError):
    """The MTurk API (or match's crowd server) refused a request."""
