"""docs/api.md documents every endpoint and every CLI command (so they can't drift)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from match.api.errors import EXTRA_ENDPOINTS, METHODS
from match.cli import cli

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "api.md"


def test_every_route_is_documented(tmp_path: Path) -> None:
    from match.app import create_app

    app: Flask = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path)})
    text = DOC.read_text(encoding="utf-8")
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api.")}
    extra = {"openapi": "/openapi.json", "metrics": "/metrics"}
    assert set(extra) == set(EXTRA_ENDPOINTS)
    assert routes == {f"/{name}" for name in METHODS} | set(extra.values())
    for route in routes:
        assert f"{route}`" in text, f"docs/api.md does not document {route}"


def test_every_command_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in cli.commands:
        assert f"match {name}" in text, f"docs/api.md does not document `match {name}`"
