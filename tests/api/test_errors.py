"""The failure envelope, pinned once over every way a request can fail.

Every failing request answers JSON (never an HTML page, never a 500 for anything the
client sent) in the envelope ``{"status": "fail", "error": [message], "method", "result": []}``
with the status of its :mod:`match.errors` class, and a failed ``/add`` stores nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from match.app import close_store, create_app
from tests.api.conftest import UPLOAD_LIMIT, Remote, add, count, multipart, upload

Send = Callable[[FlaskClient], TestResponse]


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failing_requests(photo: bytes, remote: Remote) -> list[tuple[str, Send, int, str, str]]:
    """(case, request, HTTP status, envelope method, a word the message must contain)."""
    text = upload(b"just some text, not an image\n", "notes.txt")
    truncated = upload(photo[: len(photo) // 2], "truncated.jpg")
    image = upload(photo)

    def form(path: str, fields: dict[str, Any], method: str = "POST") -> Send:
        return lambda client: multipart(client, path, fields, method)

    def post(path: str, **kwargs: Any) -> Send:
        return lambda client: client.post(path, **kwargs)

    return [
        ("add without filepath", form("/add", {"image": image}), 400, "add", "filepath"),
        ("add with empty filepath", post("/add", data={"filepath": "", "url": remote.url("x")}), 400, "add",
         "filepath"),
        ("add with invalid metadata JSON", form("/add", {"image": image, "filepath": "m",
                                                         "metadata": "{oops"}), 400, "add", "metadata"),
        ("add with non-object metadata", form("/add", {"image": image, "filepath": "m",
                                                       "metadata": "[1, 2]"}), 400, "add", "object"),
        ("add with NaN in metadata", form("/add", {"image": image, "filepath": "m",
                                                   "metadata": '{"x": NaN}'}), 400, "add", "metadata"),
        ("add without an image", post("/add", data={"filepath": "m"}), 400, "add", "url"),
        ("add with an empty upload", form("/add", {"image": upload(b""), "filepath": "m"}), 400, "add",
         "empty"),
        ("add with both url and image", form("/add", {"image": image, "url": remote.url("x"),
                                                      "filepath": "m"}), 400, "add", "not both"),
        ("add with image as a text field", form("/add", {"image": "photo.jpg", "filepath": "m"}), 400, "add",
         "uploaded file"),
        ("add with a too long filepath", form("/add", {"image": image, "filepath": "x" * 5000}), 400, "add",
         "filepath"),
        ("add a text file", form("/add", {"image": text, "filepath": "m"}), 415, "add", ""),
        ("add a truncated JPEG", form("/add", {"image": truncated, "filepath": "m"}), 422, "add", ""),
        ("add a body over the limit", form("/add", {"image": upload(b"\xff" * (UPLOAD_LIMIT + 1)),
                                                    "filepath": "m"}), 413, "add", "MATCH_MAX_UPLOAD_BYTES"),
        ("add a url answering 404", post("/add", data={"url": remote.url("status/404"), "filepath": "m"}),
         502, "add", "404"),
        ("add a url refusing connections",
         post("/add", data={"url": f"http://127.0.0.1:{closed_port()}/a.jpg", "filepath": "m"}),
         502, "add", "refused"),
        ("add a slow url", post("/add", data={"url": remote.url("slow"), "filepath": "m"}), 504, "add",
         "timed out"),
        ("add a url streaming too much", post("/add", data={"url": remote.url("endless"), "filepath": "m"}),
         413, "add", "MATCH_MAX_UPLOAD_BYTES"),
        ("add an ftp url", post("/add", data={"url": "ftp://127.0.0.1/a.jpg", "filepath": "m"}), 400, "add",
         "http"),
        ("add with a JSON body that is not JSON",
         post("/add", data="{not json", content_type="application/json"), 400, "add", "JSON"),
        ("add with a JSON array body", post("/add", json=[1, 2]), 400, "add", "object"),
        ("add with a JSON body nested too deep",
         post("/add", data="[" * 100_000 + "]" * 100_000, content_type="application/json"),
         400, "add", "JSON"),
        ("add with metadata nested too deep",
         form("/add", {"image": image, "filepath": "m", "metadata": "[" * 100_000}), 400, "add", "metadata"),
        ("add with a lone surrogate in filepath",
         post("/add", data='{"filepath": "\\ud800", "url": "http://x"}', content_type="application/json"),
         400, "add", "filepath"),
        ("search with a bad boolean", form("/search", {"image": image, "all_orientations": "maybe"}), 400,
         "search", "all_orientations"),
        ("search with a non-integer limit", form("/search", {"image": image, "limit": "ten"}), 400, "search",
         "limit"),
        ("search with limit 0", form("/search", {"image": image, "limit": "0"}), 400, "search", "limit"),
        ("search with a huge limit", form("/search", {"image": image, "limit": "100000"}), 400, "search",
         "limit"),
        ("search with cutoff 2", form("/search", {"image": image, "cutoff": "2"}), 400, "search", "cutoff"),
        ("search without an image", post("/search", data={}), 400, "search", "image"),
        ("compare without image2", form("/compare", {"image1": image}), 400, "compare", "image2"),
        ("compare with a text file", form("/compare", {"image1": image, "image2": text}), 415, "compare", ""),
        ("delete without filepath", lambda client: client.delete("/delete"), 400, "delete", "filepath"),
        ("delete an unknown filepath", lambda client: client.delete("/delete?filepath=nope"), 404, "delete",
         "nope"),
        ("list with a negative offset", lambda client: client.get("/list?offset=-1"), 400, "list", "offset"),
        ("list with a non-integer offset", lambda client: client.get("/list?offset=abc"), 400, "list",
         "offset"),
        ("list with a fractional limit", lambda client: client.get("/list?limit=1.5"), 400, "list", "limit"),
        ("list with a limit over the maximum", lambda client: client.get("/list?limit=1001"), 400, "list",
         "limit"),
        ("unknown route", lambda client: client.get("/nope"), 404, "", "/nope"),
        ("GET on a POST endpoint", lambda client: client.get("/add"), 405, "add", "POST"),
        ("PUT on /search", lambda client: client.put("/search"), 405, "search", "POST"),
    ]


def test_every_failure_has_the_envelope_and_stores_nothing(client: FlaskClient, photos: list[bytes],
                                                           remote: Remote) -> None:
    add(client, "existing.jpg", photos[0])
    for case, send, status, method, word in failing_requests(photos[0], remote):
        response = send(client)
        assert response.status_code == status, (case, response.status_code, response.get_data(as_text=True))
        assert response.mimetype == "application/json", case
        body = response.json
        assert list(body) == ["status", "error", "method", "result"], case
        assert body["status"] == "fail" and body["result"] == [] and body["method"] == method, (case, body)
        assert isinstance(body["error"], list) and len(body["error"]) == 1, (case, body)
        message = body["error"][0]
        assert isinstance(message, str) and message and "Traceback" not in message, (case, body)
        assert word.lower() in message.lower(), (case, message)
        assert count(client) == 1, f"{case}: the store changed"
    assert client.get("/list").json["result"] == ["existing.jpg"]


def test_405_names_the_allowed_methods(client: FlaskClient) -> None:
    response = client.get("/search")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


@pytest.fixture
def boom_app(tmp_path: Path) -> Flask:
    application = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path), "TESTING": True,
                              "MATCH_LOG_LEVEL": "error"})

    def boom() -> str:
        raise RuntimeError("secret internal detail")

    application.add_url_rule("/boom", view_func=boom)
    return application


def test_unexpected_errors_are_a_generic_500(boom_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    response = boom_app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.json["status"] == "fail"
    assert "secret" not in response.get_data(as_text=True)
    assert any("secret internal detail" in str(record.exc_info) for record in caplog.records)


def test_store_unavailable_is_503_and_ping_still_answers(tmp_path: Path) -> None:
    app = create_app({"MATCH_STORE": "elasticsearch", "ELASTICSEARCH_URL": f"http://127.0.0.1:{closed_port()}",
                      "MATCH_ES_TIMEOUT": 1.0, "MATCH_DATA_DIR": str(tmp_path), "TESTING": True,
                      "MATCH_LOG_LEVEL": "error"})
    client = app.test_client()
    try:
        assert client.get("/ping").status_code == 200  # liveness never touches the store
        for response in (client.get("/ready"), client.get("/count")):
            assert response.status_code == 503, response.json
            assert response.json["status"] == "fail" and response.json["error"]
            assert response.headers["Retry-After"]
    finally:
        close_store(app)
