"""The web UI: HTML pages for people, at ``/ui/`` (docs/web.md).

* :mod:`match.web.views` — the blueprint ``bp``: search, compare, browse (add, delete),
  the crowd dashboard; server-rendered templates that work without JavaScript, and
  ``static/match.js`` adds drag and drop, paste and the live cutoff slider.
* :mod:`match.web.thumbs` — thumbnails of indexed images (no Flask: the service calls it).
* :mod:`match.web.csrf` — per-session CSRF tokens for the forms that change state.

Kept apart from :mod:`match.api` (the JSON blueprint): the UI registers no error
handler; its views catch :class:`match.errors.MatchError` and show the message on the
page. ``bp`` is loaded on first access, so the service can import :mod:`match.web.thumbs`
without pulling in the views.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bp"]


def __getattr__(name: str) -> Any:
    if name == "bp":
        from match.web.views import bp

        return bp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
