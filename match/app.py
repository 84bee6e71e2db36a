"""The application factory, and the one way views reach the store.

``create_app(config)`` loads the settings (:func:`match.config.load`: defaults, the
``MATCH_CONFIG`` file, ``MATCH_*`` env, then ``config``), registers the API blueprint,
the JSON error renderer, API keys and the access log/metrics hooks, and returns the
Flask app. It does not open the store.

Why the store opens lazily: gunicorn imports the app once and forks its workers, and a
SQLite connection or an Elasticsearch connection pool must not be shared across a
fork. So each process opens its own store on first use (:func:`get_store` notices a
fork by the process id), and views get it only through :func:`get_store` (as HMA's
``get_storage()`` does): no view imports a backend.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app

from match import config as match_config
from match.fetch import Fetcher
from match.store import SignatureStore, open_store

__all__ = ["create_app", "get_store", "get_fetcher", "close_store", "EXTENSION"]

#: Key of match's per-app state in ``app.extensions``.
EXTENSION = "match"


class _State:
    """What an app holds besides its config: the per-process store and the fetcher."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        self.fetcher = Fetcher(timeout=float(settings["MATCH_FETCH_TIMEOUT"]),
                               max_bytes=int(settings["MATCH_MAX_UPLOAD_BYTES"]),
                               allow_networks=settings["MATCH_FETCH_ALLOW_NETWORKS"])
        self._store: SignatureStore | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def store(self) -> SignatureStore:
        pid = os.getpid()
        if self._store is None or self._pid != pid:
            with self._lock:
                if self._store is None or self._pid != pid:
                    # A store inherited through fork belongs to the parent: drop it unclosed.
                    self._store = open_store(self.settings)
                    self._pid = pid
        return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None and self._pid == os.getpid():
                self._store.close()
            self._store = None


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the match app; ``config`` overrides every other settings source.

    Raises ValueError naming the setting when one does not parse.
    """
    settings = match_config.load(config)
    app = Flask("match")
    app.config.update(settings)
    # werkzeug refuses bigger bodies with 413 before a view reads them.
    app.config["MAX_CONTENT_LENGTH"] = settings["MATCH_MAX_UPLOAD_BYTES"]
    # Keep the envelope's keys in the documented order (status, error, method, result).
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = _State(app.config)
    logging.getLogger("match").setLevel(str(settings["MATCH_LOG_LEVEL"]).upper())

    # Imported here because the views import get_store from this module. init_app
    # registers the API blueprint, the JSON error renderer, API keys (match.api.auth),
    # the access log and the request metrics (match.api.observe).
    from match.api import init_app as init_api

    init_api(app)

    # --- web UI (match/web, docs/web.md): HTML pages at /ui/, "/" redirects there ---
    if settings["MATCH_UI"]:
        from match.web import bp as web_blueprint

        app.register_blueprint(web_blueprint)
    # --- end web UI ---

    # --- crowd (match/crowd, docs/crowd.md): the Tasks API and kept images at /crowd/ ---
    from match.crowd.api import bp as crowd_blueprint

    app.register_blueprint(crowd_blueprint)
    # --- end crowd ---
    return app


def _state(app: Flask | None) -> _State:
    state = (app or current_app).extensions[EXTENSION]
    assert isinstance(state, _State)
    return state


def get_store(app: Flask | None = None) -> SignatureStore:
    """This process's store for ``app`` (default: the current app), opened on first use.

    Raises StoreUnavailable (503) when the store does not answer.
    """
    return _state(app).store()


def get_fetcher(app: Flask | None = None) -> Fetcher:
    """The URL fetcher configured for ``app`` (default: the current app)."""
    return _state(app).fetcher


def close_store(app: Flask | None = None) -> None:
    """Close this process's store, if it opened one (gunicorn's worker_exit, the CLI)."""
    _state(app).close()
