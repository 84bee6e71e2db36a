"""Every endpoint, on both backends, sent the ways dsys/match clients send them.

Form-urlencoded (``curl -d``) with a ``url``, multipart (``curl -F``) with an uploaded
file, and the JSON-body extension. Real photos; the search tests use resized and
re-compressed copies, as found in the wild.
"""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from flask.testing import FlaskClient
from PIL import Image

from tests.api.conftest import (
    Remote,
    add,
    count,
    mirrored_copy,
    multipart,
    resized_copy,
    rotated_copy,
    search,
    upload,
)

ENVELOPE_KEYS = ["status", "error", "method", "result"]


def test_ping_get_and_post(client: FlaskClient) -> None:
    for response in (client.get("/ping"), client.post("/ping")):
        assert response.status_code == 200
        assert response.json == {"status": "ok", "error": [], "method": "ping", "result": []}
        assert list(response.json) == ENVELOPE_KEYS  # the documented order


def test_ready_when_the_store_answers(client: FlaskClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json["status"] == "ok" and response.json["method"] == "ready"


def test_add_upload_multipart_then_search(client: FlaskClient, photos: list[bytes]) -> None:
    body = add(client, "photos/one.jpg", photos[0])
    assert body == {"status": "ok", "error": [], "method": "add", "result": []}
    assert count(client) == 1
    result = search(client, photos[0])
    assert result[0]["filepath"] == "photos/one.jpg"
    assert result[0]["score"] == pytest.approx(100.0)
    # dsys/match's keys, then the evidence (docs/api.md).
    assert set(result[0]) == {"score", "filepath", "metadata", "distance", "found_by"}


def test_add_and_search_by_url_form_urlencoded(client: FlaskClient, photos: list[bytes],
                                               remote: Remote) -> None:
    url = remote.put("by-url.jpg", photos[1])
    response = client.post("/add", data={"url": url, "filepath": url})  # curl -d
    assert response.status_code == 200, response.json
    copy_url = remote.put("by-url-copy.jpg", resized_copy(photos[1]))
    response = client.post("/search", data={"url": copy_url})
    assert response.status_code == 200, response.json
    assert response.json["method"] == "search"
    assert response.json["result"][0]["filepath"] == url


def test_json_body_extension(client: FlaskClient, photos: list[bytes], remote: Remote) -> None:
    import base64

    url = remote.put("json.jpg", photos[2])
    response = client.post("/add", json={"url": url, "filepath": "json.jpg",
                                          "metadata": {"source": "json"}})
    assert response.status_code == 200, response.json
    encoded = base64.b64encode(resized_copy(photos[2])).decode()
    response = client.post("/search", json={"image": encoded, "all_orientations": False, "limit": 5})
    assert response.status_code == 200, response.json
    hit = response.json["result"][0]
    assert hit["filepath"] == "json.jpg" and hit["metadata"]["source"] == "json"


def test_add_stores_sha256_and_metadata(client: FlaskClient, photos: list[bytes]) -> None:
    metadata = {"source": "camera", "tags": ["a", "b"], "sha256": "forged"}
    add(client, "meta.jpg", photos[0], metadata=json.dumps(metadata))
    hit = search(client, photos[0])[0]
    assert hit["metadata"]["sha256"] == hashlib.sha256(photos[0]).hexdigest()  # the server's wins
    assert hit["metadata"]["source"] == "camera" and hit["metadata"]["tags"] == ["a", "b"]


def test_add_overwrites_the_filepath(client: FlaskClient, photos: list[bytes]) -> None:
    add(client, "same.jpg", photos[0], metadata='{"version": 1}')
    add(client, "same.jpg", photos[3], metadata='{"version": 2}')
    assert count(client) == 1
    assert all(hit["filepath"] != "same.jpg" for hit in search(client, photos[0], all_orientations="false"))
    hit = search(client, photos[3])[0]
    assert hit["filepath"] == "same.jpg" and hit["metadata"]["version"] == 2


def test_search_finds_the_original_of_resized_recompressed_copies(client: FlaskClient,
                                                                   photos: list[bytes]) -> None:
    for index, data in enumerate(photos):
        add(client, f"corpus/{index:02d}.jpg", data)
    assert count(client) == len(photos)
    for index, data in enumerate(photos):
        result = search(client, resized_copy(data))
        assert result, f"no match for the copy of photo {index}"
        assert result[0]["filepath"] == f"corpus/{index:02d}.jpg"
        assert result[0]["score"] > 55
        scores = [hit["score"] for hit in result]
        assert scores == sorted(scores, reverse=True)


def test_search_limit_and_cutoff(client: FlaskClient, photos: list[bytes]) -> None:
    for index, data in enumerate(photos[:4]):
        add(client, f"p{index}.jpg", data)
    assert len(search(client, photos[0], limit="1")) == 1
    # cutoff 0 keeps only identical signatures; a copy whose signature differs is
    # reported only when local features confirm it, and says so.
    result = search(client, resized_copy(photos[0], scale=0.3, quality=30), cutoff="0")
    assert [(hit["filepath"], hit["found_by"]) for hit in result] == [("p0.jpg", ["features"])]
    assert result[0]["distance"] > 0 and result[0]["inliers"] >= 10
    exact = search(client, photos[0], cutoff="0")[0]
    assert exact["filepath"] == "p0.jpg" and exact["found_by"] == ["signature"]


@pytest.mark.parametrize("transform", [rotated_copy, mirrored_copy], ids=["rotated", "mirrored"])
def test_all_orientations(client: FlaskClient, photos: list[bytes], transform: object) -> None:
    assert callable(transform)
    add(client, "upright.jpg", photos[4])
    turned = transform(photos[4])
    assert search(client, turned)[0]["filepath"] == "upright.jpg"  # default: true
    assert search(client, turned, all_orientations="true")[0]["filepath"] == "upright.jpg"
    # The signature of one orientation misses it; local features are rotation
    # invariant, so it is still found, by features alone.
    found = search(client, turned, all_orientations="false")
    # ORB is rotation invariant, not mirror invariant.
    expected = [("upright.jpg", ["features"])] if transform is rotated_copy else []
    assert [(hit["filepath"], hit["found_by"]) for hit in found] == expected


def test_compare(client: FlaskClient, photos: list[bytes], remote: Remote) -> None:
    response = multipart(client, "/compare", {"image1": upload(photos[0]), "image2": upload(photos[0])})
    assert response.status_code == 200, response.json
    assert response.json["method"] == "compare"
    same = response.json["result"][0]
    assert same["score"] == pytest.approx(100.0) and same["distance"] == pytest.approx(0.0)
    width, height = Image.open(io.BytesIO(photos[0])).size
    assert same["inliers"] >= 50 and same["region"] == [0, 0, width, height]

    url1, url2 = remote.put("c1.jpg", photos[0]), remote.put("c2.jpg", resized_copy(photos[0]))
    copy = client.post("/compare", data={"url1": url1, "url2": url2}).json["result"][0]
    assert 55 < copy["score"] < 100
    assert copy["score"] == pytest.approx((1 - copy["distance"]) * 100)

    mixed = multipart(client, "/compare", {"url1": url1, "image2": upload(photos[5])})
    assert mixed.status_code == 200, mixed.json
    assert mixed.json["result"][0]["score"] < copy["score"]
    assert count(client) == 0  # compare stores nothing


def test_delete(client: FlaskClient, photos: list[bytes]) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        add(client, name, photos[0])
    response = client.delete("/delete", data={"filepath": "a.jpg"})  # curl -X DELETE -d
    assert response.status_code == 200, response.json
    assert response.json == {"status": "ok", "error": [], "method": "delete", "result": []}
    assert client.delete("/delete?filepath=b.jpg").status_code == 200  # query string
    assert client.post("/delete", data={"filepath": "c.jpg"}).status_code == 200  # old clients
    assert count(client) == 0
    missing = client.delete("/delete", data={"filepath": "a.jpg"})
    assert missing.status_code == 404
    assert missing.json["status"] == "fail" and "a.jpg" in missing.json["error"][0]


def test_count_and_list(client: FlaskClient, photos: list[bytes]) -> None:
    names = [f"list/{index:02d}.jpg" for index in range(25)]
    for name in names:
        add(client, name, photos[0])
    assert client.post("/count").json["result"] == [25]
    first = client.get("/list")
    assert first.status_code == 200 and first.json["method"] == "list"
    assert first.json["result"] == names[:20]  # default limit 20, ascending
    assert client.get("/list?offset=20").json["result"] == names[20:]
    assert client.post("/list", data={"offset": "3", "limit": "2"}).json["result"] == names[3:5]
    assert client.get("/list?offset=100").json["result"] == []
