"""The JSON API: one blueprint (:mod:`match.api.views`), request fields
(:mod:`match.api.fields`), the one error renderer (:mod:`match.api.errors`), API keys
(:mod:`match.api.auth`), access log and metrics hooks (:mod:`match.api.observe`) and
the OpenAPI description (``match/openapi.json``, served at ``/openapi.json``)."""

from __future__ import annotations

from flask import Flask

from match.api import auth, observe
from match.api.errors import register as register_error_handlers
from match.api.views import blueprint

__all__ = ["blueprint", "register_error_handlers", "init_app"]


def init_app(app: Flask) -> None:
    """Register the API on ``app``: blueprint, error renderer, API keys, observability.

    Raises ValueError when an API key setting does not parse.
    """
    app.register_blueprint(blueprint)
    register_error_handlers(app)
    auth.init_app(app, blueprint.name)
    observe.init_app(app)
