"""match/openapi.json against the app: the same routes and methods, and real responses
(successes and failures of every endpoint) valid against its response schemas.

What is left out of the comparison, and why: ``static`` (Flask's built-in static
route, which match does not use), HEAD and OPTIONS (werkzeug answers them for every
GET/any route automatically), and the routes of other blueprints (the web UI's HTML
pages and the crowd Tasks API, which have their own shapes and docs: docs/web.md,
docs/crowd.md). Everything the ``api`` blueprint serves must be described, and
everything described must be served.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from match import __version__
from match.app import create_app
from tests.api.conftest import add, jpeg, multipart, upload

AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}


def spec() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("match").joinpath("openapi.json").read_text("utf-8"))
    return data


def served(app: Flask) -> set[tuple[str, str]]:
    """(path, METHOD) pairs of the api blueprint, as the url_map has them."""
    pairs = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or not rule.endpoint.startswith("api."):
            continue
        for method in (rule.methods or set()) - AUTOMATIC_METHODS:
            pairs.add((rule.rule, method))
    return pairs


def described() -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in spec()["paths"].items() for method in item
            if method in ("get", "post", "put", "delete", "patch")}


def test_every_route_is_described_and_every_description_is_served(tmp_path: Path) -> None:
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path)})
    assert served(app) == described()
    # Nothing of another blueprint claims a path of the spec.
    others = {rule.rule for rule in app.url_map.iter_rules() if not rule.endpoint.startswith("api.")}
    assert not others & set(spec()["paths"])


def test_the_spec_loads_and_every_operation_has_its_statuses() -> None:
    document = spec()
    assert document["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(described())
    for operation in operations:
        statuses = set(operation.definition.raw["responses"])
        assert {"200", "400"} <= statuses, operation.label
        if operation.definition.raw.get("security") != []:
            assert {"401", "403"} <= statuses, f"{operation.label}: protected, so 401/403"


def test_the_spec_is_served_with_the_version(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.json
    assert body["info"]["version"] == __version__
    assert body["paths"] == spec()["paths"]


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_dict(spec())


def cropped(data: bytes, keep: float = 0.7) -> bytes:
    """The middle of the photo, ``keep`` of each side: the signature loses it, local features don't."""
    with Image.open(io.BytesIO(data)) as image:
        margin_x, margin_y = round(image.width * (1 - keep) / 2), round(image.height * (1 - keep) / 2)
        return jpeg(image.crop((margin_x, margin_y, image.width - margin_x, image.height - margin_y)))


def test_real_responses_match_the_spec(client: FlaskClient, photos: list[bytes], schema: Any) -> None:
    """Successes and failures of every endpoint, checked against their response schemas."""
    photo = photos[0]
    crop = cropped(photo)
    add(client, "kept.jpg", photo, metadata='{"source": "test"}')
    text = upload(b"plain text\n", "a.jpg")
    calls: list[tuple[str, str, Any]] = [
        ("/add", "POST", lambda: multipart(client, "/add", {"filepath": "a.jpg", "image": upload(photo)})),
        ("/add", "POST", lambda: multipart(client, "/add", {"filepath": "b.jpg", "image": text})),
        ("/add", "POST", lambda: multipart(client, "/add", {"image": upload(photo)})),
        ("/add", "POST", lambda: multipart(client, "/add", {"filepath": "c", "image": upload(photo[:500])})),
        ("/add", "POST", lambda: client.post("/add", json={"filepath": "d", "url": "ftp://x/"})),
        ("/search", "POST", lambda: multipart(client, "/search", {"image": upload(photo)})),
        ("/search", "POST", lambda: multipart(client, "/search", {"image": upload(photo), "limit": "0"})),
        ("/search", "POST", lambda: multipart(client, "/search", {"image": text})),
        ("/search", "POST", lambda: multipart(client, "/search", {"image": upload(crop)})),
        ("/compare", "POST", lambda: multipart(client, "/compare", {"image1": upload(photo),
                                                                    "image2": upload(photo)})),
        ("/compare", "POST", lambda: multipart(client, "/compare", {"image1": upload(crop),
                                                                    "image2": upload(photos[1])})),
        ("/compare", "POST", lambda: multipart(client, "/compare", {"image1": upload(photo)})),
        ("/count", "GET", lambda: client.get("/count")),
        ("/count", "POST", lambda: client.post("/count")),
        ("/list", "GET", lambda: client.get("/list?limit=5")),
        ("/list", "GET", lambda: client.get("/list?offset=-1")),
        ("/list", "POST", lambda: client.post("/list", data={"limit": "2"})),
        ("/delete", "DELETE", lambda: client.delete("/delete?filepath=a.jpg")),
        ("/delete", "DELETE", lambda: client.delete("/delete?filepath=nope")),
        ("/delete", "POST", lambda: client.post("/delete", data={})),
        ("/ping", "GET", lambda: client.get("/ping")),
        ("/ping", "POST", lambda: client.post("/ping")),
        ("/ready", "GET", lambda: client.get("/ready")),
        ("/openapi.json", "GET", lambda: client.get("/openapi.json")),
        ("/metrics", "GET", lambda: client.get("/metrics")),
    ]
    statuses = set()
    bodies: list[Any] = []
    for path, method, send in calls:
        response = send()
        statuses.add(response.status_code)
        if path in ("/search", "/compare") and response.status_code == 200:
            bodies.append(response.json)
        operation = schema[path][method]
        assert operation.is_valid_response(response), (path, method, response.status_code,
                                                       response.get_data(as_text=True)[:300])
    assert {200, 400, 404, 415, 422} <= statuses
    # Both shapes of the evidence were checked: a crop found by local features (with its
    # inliers and region), and a comparison they do not confirm (nulls).
    hits = [hit for body in bodies if body["method"] == "search" for hit in body["result"]]
    assert any(hit["found_by"] == ["features"] and "region" in hit for hit in hits), hits
    comparisons = [body["result"][0] for body in bodies if body["method"] == "compare"]
    assert {result["inliers"] is None for result in comparisons} == {True, False}, comparisons


def test_key_failures_match_the_spec(tmp_path: Path, schema: Any) -> None:
    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path),
                      "MATCH_API_KEYS": ["reader-0123456789abcdef:ro"]})
    client = app.test_client()
    for response, status in ((client.get("/count"), 401),
                             (client.post("/delete", data={"filepath": "x"},
                                          headers={"X-API-Key": "reader-0123456789abcdef"}), 403)):
        assert response.status_code == status
        operation = schema["/count"]["GET"] if status == 401 else schema["/delete"]["POST"]
        assert operation.is_valid_response(response), response.json
