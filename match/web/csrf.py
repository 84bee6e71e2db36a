"""CSRF tokens for the UI's state-changing forms (add, delete, send to the crowd).

The UI is a browser surface: without a token, any page a user visits could make their
browser POST a delete to match. The pattern is OWASP's *signed double-submit cookie*:

* a random session id lives in the ``match_ui`` cookie (HttpOnly, SameSite=Lax,
  path ``/ui``), set on the first page that renders a form;
* each form carries ``csrf_token`` = HMAC-SHA256(secret, session id);
* a POST is accepted only when the form's token is the HMAC of the cookie's id.

A cross-site page can neither read the cookie nor compute the HMAC without the secret,
so it cannot forge the field. The secret is ``MATCH_UI_SECRET`` or, when empty, a
random one made once in ``<MATCH_DATA_DIR>/ui-secret`` (mode 0600) and shared by every
worker process on the host. No Flask session (and so no app ``SECRET_KEY``) is needed.
The JSON API is not browser-facing and takes no token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Request, Response

__all__ = ["COOKIE", "FIELD", "secret", "session_id", "token", "valid", "set_cookie"]

#: Cookie holding the random session id.
COOKIE = "match_ui"
#: Form field holding the token.
FIELD = "csrf_token"

_secrets: dict[str, bytes] = {}


def secret(settings: Mapping[str, Any]) -> bytes:
    """The signing secret: ``MATCH_UI_SECRET`` or the data directory's ``ui-secret``."""
    configured = str(settings.get("MATCH_UI_SECRET") or "")
    if configured:
        return configured.encode()
    path = Path(str(settings["MATCH_DATA_DIR"])) / "ui-secret"
    cached = _secrets.get(str(path))
    if cached is not None:
        return cached
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".ui-secret.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(temp, path)  # atomic; the first process to link wins, the rest read it
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    value = path.read_text().strip().encode()
    _secrets[str(path)] = value
    return value


def session_id(request: Request) -> str | None:
    """The session id from the cookie, if it looks like one."""
    value = request.cookies.get(COOKIE, "")
    return value if len(value) == 43 and value.replace("-", "").replace("_", "").isalnum() else None


def new_session_id() -> str:
    """A fresh random session id (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token(settings: Mapping[str, Any], sid: str) -> str:
    """The form token for session ``sid``."""
    return hmac.new(secret(settings), f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()


def valid(settings: Mapping[str, Any], request: Request) -> bool:
    """Whether the request's form token matches its cookie."""
    sid = session_id(request)
    sent = request.form.get(FIELD, "")
    return sid is not None and bool(sent) and hmac.compare_digest(token(settings, sid), sent)


def set_cookie(response: Response, sid: str, *, secure: bool) -> None:
    """Set the session cookie (for the browser session only)."""
    response.set_cookie(COOKIE, sid, path="/ui", httponly=True, samesite="Lax", secure=secure)
