"""Optional API keys: read-only and read-write, checked in constant time, never logged.

With no keys configured (``MATCH_API_KEYS`` empty and no ``MATCH_API_KEYS_FILE``) the
API is open, as dsys/match was. With keys, every API endpoint but the open ones needs
one, sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``:

============================  ============================================
role                          may use
============================  ============================================
(none)                        /ping, /ready, /openapi.json (:data:`OPEN`)
``ro``                        /search, /compare, /count, /list, /metrics
``rw``                        everything ``ro`` may, plus /add and /delete
============================  ============================================

/ready stays open because Kubernetes probes send no credentials and it tells nothing
but "the store answers"; /openapi.json is public documentation.

No key, or an unknown one, is a 401 (with ``WWW-Authenticate: Bearer``); a known key
whose role is too weak is a 403. The presented key is hashed and compared with
:func:`hmac.compare_digest` against the hash of *every* configured key, without
stopping at a match, so the time taken says neither which key matched nor how much of
one did. Keys never reach a log or an error message: the access log names the key by
its position (``key#2``), and a malformed setting is reported without its value.

Other blueprints (the web UI, the crowd Tasks API) can use :func:`require` as a
decorator or call :func:`check_request` from their own ``before_request``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from match.errors import Forbidden, Unauthorized

__all__ = ["ROLES", "OPEN", "ENDPOINT_ROLES", "Keys", "load_keys", "check_request", "require", "init_app"]

#: Roles, weakest first: a role may do everything the ones before it may.
ROLES = ("ro", "rw")

#: API endpoints anyone may call, keys or not.
OPEN = frozenset({"ping", "ready", "openapi"})

#: The role each protected API endpoint needs.
ENDPOINT_ROLES: Mapping[str, str] = {
    "search": "ro", "compare": "ro", "count": "ro", "list": "ro", "metrics": "ro",
    "add": "rw", "delete": "rw",
}

_EXTENSION = "match.api_keys"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Keys:
    """The configured keys as SHA-256 digests, with their roles and log labels."""

    digests: tuple[bytes, ...] = ()
    roles: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def lookup(self, presented: str) -> tuple[str, str] | None:
        """(role, label) of the key ``presented``, or None. Constant time in the keys."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = -1
        for index, candidate in enumerate(self.digests):
            # No early exit: every key is compared, whatever the outcome.
            same = hmac.compare_digest(digest, candidate)
            found = index if same else found
        if found < 0:
            return None
        return self.roles[found], f"key#{found + 1}"


def _parse_entries(entries: Sequence[str], where: str) -> list[tuple[str, str]]:
    pairs = []
    for number, entry in enumerate(entries, 1):
        key, _, role = entry.strip().rpartition(":")
        if role not in ROLES or len(key) < 16 or any(ch.isspace() for ch in key):
            raise ValueError(f"{where}: entry {number} is not key:role (role ro or rw, a key of at least "
                             "16 characters without spaces); its value is not shown")
        pairs.append((key, role))
    return pairs


def load_keys(settings: Mapping[str, Any]) -> Keys:
    """Keys from ``MATCH_API_KEYS`` and the lines of ``MATCH_API_KEYS_FILE``.

    Raises ValueError (naming the setting and the entry's position, never its value).
    """
    pairs = _parse_entries(list(settings.get("MATCH_API_KEYS") or []), "MATCH_API_KEYS")
    path = str(settings.get("MATCH_API_KEYS_FILE") or "")
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"MATCH_API_KEYS_FILE: cannot read {path}: {exc.strerror}") from exc
        entries = [line for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]
        pairs += _parse_entries(entries, f"MATCH_API_KEYS_FILE {path}")
    digests = tuple(hashlib.sha256(key.encode("utf-8")).digest() for key, _ in pairs)
    return Keys(digests, tuple(role for _, role in pairs))


def _presented() -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    value = request.headers.get("X-API-Key", "").strip()
    return value or None


def check_request(role: str, keys: Keys | None = None) -> None:
    """Raise Unauthorized or Forbidden unless the request carries a key with ``role``.

    Does nothing when no keys are configured. Records the key's label in
    ``flask.g.api_key`` for the access log.
    """
    keys = keys if keys is not None else current_app.extensions.get(_EXTENSION, Keys())
    if not keys.enabled:
        return
    presented = _presented()
    if presented is None:
        raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    found = keys.lookup(presented)
    if found is None:
        raise Unauthorized("the API key is not valid")
    granted, label = found
    g.api_key = label
    if ROLES.index(granted) < ROLES.index(role):
        raise Forbidden(f"this API key is read-only ({granted}); {request.path} needs a {role} key")


def require(role: str) -> Callable[[F], F]:
    """Decorator: the view needs a key with ``role`` (when keys are configured)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            check_request(role)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def _check_api_endpoint() -> None:
    """The API blueprint's before_request: open endpoints pass, others need their role."""
    name = (request.endpoint or "").rsplit(".", 1)[-1]
    if name in OPEN:
        return
    # An endpoint missing from the table needs the strongest role (fail closed).
    check_request(ENDPOINT_ROLES.get(name, ROLES[-1]))


def init_app(app: Flask, blueprint_name: str = "api") -> None:
    """Load the keys (ValueError on a bad entry) and guard the API blueprint's endpoints."""
    app.extensions[_EXTENSION] = load_keys(app.config)
    app.before_request_funcs.setdefault(blueprint_name, []).append(_check_api_endpoint)
