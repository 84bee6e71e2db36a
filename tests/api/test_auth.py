"""API keys (match.api.auth): open by default; ro and rw roles; both headers; 401 vs 403;
/ping, /ready and /openapi.json open; keys never in logs or error messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from match.api import auth
from match.app import close_store, create_app
from tests.api.conftest import upload

READER = "reader-0123456789abcdef"
WRITER = "writer-fedcba9876543210"


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Flask]:
    keys = tmp_path / "keys"
    keys.write_text(f"# the writer\n{WRITER}:rw   # inline comment\n\n", encoding="utf-8")
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path / "data"),
                      "MATCH_API_KEYS": f"{READER}:ro", "MATCH_API_KEYS_FILE": str(keys),
                      "MATCH_LOG_LEVEL": "error"})
    yield app
    close_store(app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_the_api_is_open(client: FlaskClient) -> None:
    assert client.get("/count").status_code == 200
    assert client.delete("/delete?filepath=x").status_code == 404


def test_open_endpoints_need_no_key(keyed: Flask) -> None:
    client = keyed.test_client()
    for path in ("/ping", "/ready", "/openapi.json"):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key-0123456789"), {"X-API-Key": "nope"},
                                     {"Authorization": f"Basic {READER}"}, {"Authorization": "Bearer "},
                                     bearer(READER + "x"), bearer(READER[:-1])])
def test_no_or_unknown_key_is_401(keyed: Flask, headers: dict[str, str]) -> None:
    client = keyed.test_client()
    for response in (client.get("/count", headers=headers), client.get("/metrics", headers=headers),
                     client.post("/add", data={"filepath": "x"}, headers=headers)):
        assert response.status_code == 401, response.json
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json["status"] == "fail" and response.json["result"] == []
        assert READER not in response.get_data(as_text=True)


def test_roles(keyed: Flask, photos: list[bytes]) -> None:
    client = keyed.test_client()
    image = {"image": upload(photos[0])}
    # Read-only: may search, compare, count, list and read metrics; not add or delete.
    for headers in (bearer(READER), {"X-API-Key": READER}):
        assert client.get("/count", headers=headers).status_code == 200
        assert client.get("/list", headers=headers).status_code == 200
        assert client.get("/metrics", headers=headers).status_code == 200
        assert multipart_with(client, "/search", image, headers).status_code == 200
        forbidden = multipart_with(client, "/add", {**image, "filepath": "a.jpg"}, headers)
        assert forbidden.status_code == 403 and "read-only" in forbidden.json["error"][0]
        assert client.delete("/delete?filepath=a.jpg", headers=headers).status_code == 403
    assert client.get("/count", headers=bearer(READER)).json["result"] == [0]
    # Read-write (from the file): everything.
    assert multipart_with(client, "/add", {**image, "filepath": "a.jpg"}, bearer(WRITER)).status_code == 200
    assert client.get("/count", headers={"X-API-Key": WRITER}).json["result"] == [1]
    assert client.delete("/delete?filepath=a.jpg", headers=bearer(WRITER)).status_code == 200


def multipart_with(client: FlaskClient, path: str, fields: dict[str, object],
                   headers: dict[str, str]) -> TestResponse:
    import urllib3

    body, content_type = urllib3.encode_multipart_formdata(fields)
    return client.post(path, data=body, content_type=content_type, headers=headers)


def test_keys_never_reach_the_logs(keyed: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = keyed.test_client()
    with caplog.at_level(logging.DEBUG):
        client.get("/count", headers=bearer(READER))
        client.get("/count?key=" + READER, headers={"X-API-Key": WRITER + "x"})
        client.post("/add", data={"filepath": "x"}, headers=bearer(READER))
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert '"key": "key#1"' in text  # the reader is named by position
    assert READER not in text and WRITER not in text


@pytest.mark.parametrize("value", ["short:ro", f"{READER}:admin", READER, f"{READER}:",
                                   f"with space {READER}:rw"])
def test_bad_key_settings_are_refused_without_echoing_them(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="MATCH_API_KEYS") as caught:
        create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path), "MATCH_API_KEYS": value})
    assert READER not in str(caught.value)


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MATCH_API_KEYS_FILE"):
        create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path),
                    "MATCH_API_KEYS_FILE": str(tmp_path / "missing")})


def test_lookup_compares_every_key() -> None:
    """No early exit: every configured key is compared whatever matched (constant time)."""
    keys = auth.load_keys({"MATCH_API_KEYS": [f"{READER}:ro", f"{WRITER}:rw", "third-key-0123456789:ro"]})
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    auth.hmac.compare_digest = counting  # type: ignore[assignment]
    try:
        assert keys.lookup(READER) == ("ro", "key#1")
        assert len(calls) == 3
        assert keys.lookup("unknown") is None
        assert len(calls) == 6
    finally:
        auth.hmac.compare_digest = real  # type: ignore[assignment]


def test_require_decorator_for_other_blueprints(keyed: Flask) -> None:
    @auth.require("rw")
    def admin() -> str:
        return "ok"

    keyed.add_url_rule("/x-admin", view_func=admin)
    client = keyed.test_client()
    assert client.get("/x-admin").status_code == 401
    assert client.get("/x-admin", headers=bearer(READER)).status_code == 403
    assert client.get("/x-admin", headers=bearer(WRITER)).status_code == 200
