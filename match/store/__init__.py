"""Signature stores: the interface and a registry of backends by name.

``open_store(config)`` builds the backend the settings name; views reach it through
:func:`match.app.get_store` and never import a backend module (only
``match/store/elasticsearch.py`` imports ``elasticsearch``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from match.store.base import Match, Record, SignatureStore, WordHit

__all__ = ["Match", "Record", "SignatureStore", "WordHit", "BACKENDS", "open_store"]

#: backend name -> "module:Class"; each class has ``from_config(config)``.
BACKENDS = {
    "local": "match.store.local:LocalStore",
    "elasticsearch": "match.store.elasticsearch:ElasticsearchStore",
}


def open_store(config: Mapping[str, Any]) -> SignatureStore:
    """Build the store named by ``config["MATCH_STORE"]`` (see match.config)."""
    name = config["MATCH_STORE"]
    if name not in BACKENDS:
        raise ValueError(f"unknown store {name!r}; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store = cls.from_config(config)
    assert isinstance(store, SignatureStore)
    return store
