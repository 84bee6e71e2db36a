"""The web UI without a browser (Flask's test client): the pages work as plain HTML forms
(no JavaScript), state-changing forms need the CSRF token, thumbnails follow adds and
deletes, and the UI leaves the JSON API alone. tests/web/test_browser.py drives the same
pages in headless Chromium.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from urllib3 import encode_multipart_formdata

from match import config as match_config
from match.app import close_store, create_app
from match.web import thumbs
from tests.conftest import ImageServer
from tests.test_e2e import resized_copy


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"MATCH_DATA_DIR": str(tmp_path / "data"), "MATCH_STORE": "local",
                      "MATCH_UI_SECRET": "test-secret-for-csrf", "TESTING": True})
    yield app
    close_store(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def token(client: FlaskClient, path: str = "/ui/browse") -> str:
    """The CSRF token of a page's form (the page also sets the session cookie)."""
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, html[:2000]
    return found.group(1)


def post_form(client: FlaskClient, path: str, fields: list[tuple[str, Any]]) -> Any:
    """POST multipart/form-data encoded here: Flask's test client spools a large body to a
    temp file it never closes (a ResourceWarning, an error under filterwarnings=error)."""
    body, content_type = encode_multipart_formdata(fields)
    return client.post(path, data=body, content_type=content_type)


def upload(client: FlaskClient, photos: list[Path], **fields: Any) -> Any:
    parts: list[tuple[str, Any]] = [("csrf_token", token(client)), *fields.items()]
    parts += [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    return post_form(client, "/ui/browse/add", parts)


def test_root_redirects_to_the_ui_and_the_api_keeps_its_json_404(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/ui/")
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["status"] == "fail"
    assert client.get("/ping").get_json()["status"] == "ok"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "Content-Security-Policy" in page.headers
    cookie = client.get("/ui/browse").headers.get("Set-Cookie", "")  # a page with a CSRF form
    assert "match_ui=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_ui_can_be_turned_off(tmp_path: Path) -> None:
    app = create_app({"MATCH_DATA_DIR": str(tmp_path), "MATCH_STORE": "local", "MATCH_UI": False})
    client = app.test_client()
    assert client.get("/ui/").status_code == 404
    assert client.get("/").get_json()["status"] == "fail"


def test_search_without_javascript(client: FlaskClient, photo_paths: list[Path]) -> None:
    photos = photo_paths[:6]
    assert upload(client, photos).status_code == 303
    query = resized_copy(photos[4].read_bytes())
    posted = post_form(client, "/ui/search", [("image", ("q.jpg", query, "image/jpeg")), ("cutoff", "0.45"),
                                              ("all", "0"), ("all", "1"), ("limit", "5")])
    assert posted.status_code == 200
    html = posted.get_data(as_text=True)
    paths = re.findall(r'<p class="path">([^<]+)</p>', html)
    assert paths and paths[0] == photos[4].name
    assert 'src="/ui/thumbs/' in html and "Score <strong>" in html
    # The image is kept under a key: its results have a URL, and the form searches it
    # again with other options (the checkbox off sends only the hidden all=0).
    key = re.search(r'name="q" value="([0-9a-f]{32})"', html).group(1)  # type: ignore[union-attr]
    again = client.get(f"/ui/?q={key}&cutoff=0.45&all=1&limit=5").get_data(as_text=True)
    assert re.findall(r'<p class="path">([^<]+)</p>', again)[0] == photos[4].name
    narrower = client.post("/ui/search", data={"q": key, "cutoff": "0.01", "all": "0"})
    assert narrower.status_code == 200
    # Its signature is beyond 0.01 now: only local features report it.
    narrowed = narrower.get_data(as_text=True)
    assert re.findall(r'<p class="path">([^<]+)</p>', narrowed) == [photos[4].name]
    assert 'data-found-by="features"' in narrowed and "Found by <strong>local features</strong>" in narrowed
    assert 'id="all" name="all" value="1">' in narrower.get_data(as_text=True)  # unchecked now


def test_search_errors_are_shown_on_the_page(client: FlaskClient) -> None:
    missing = client.post("/ui/search", data={}, content_type="multipart/form-data")
    assert missing.status_code == 400 and 'role="alert"' in missing.get_data(as_text=True)
    junk = client.post("/ui/search", data={"image": (io.BytesIO(b"not an image"), "a.jpg")},
                       content_type="multipart/form-data")
    assert junk.status_code == 415 and junk.mimetype == "text/html"
    assert 'role="alert"' in junk.get_data(as_text=True)
    expired = client.get("/ui/?q=" + "0" * 32)
    assert expired.status_code == 404 and "expired" in expired.get_data(as_text=True)


def test_state_changing_forms_need_the_csrf_token(client: FlaskClient, photo_paths: list[Path]) -> None:
    photo = photo_paths[0]
    part = ("image", (photo.name, photo.read_bytes(), "image/jpeg"))
    no_token = post_form(client, "/ui/browse/add", [part])
    assert no_token.status_code == 400
    assert client.get("/count").get_json()["result"] == [0]
    assert upload(client, [photo]).status_code == 303
    forged = client.post("/ui/browse/delete", data={"filepath": photo.name, "csrf_token": "0" * 64})
    assert forged.status_code == 400
    for path in ("/ui/crowd/verify", "/ui/crowd/sync"):
        assert client.post(path, data={}).status_code == 400
    assert client.get("/count").get_json()["result"] == [1]


def test_browse_paginates_and_delete_asks_first(client: FlaskClient, app: Flask,
                                                photo_paths: list[Path]) -> None:
    photos = photo_paths[:30]
    added = upload(client, photos, metadata='{"album": "test"}')
    assert added.status_code == 303 and "added=30" in added.headers["Location"]
    first = client.get("/ui/browse").get_data(as_text=True)
    assert first.count('class="card entry"') == 24 and "Page 1 of 2" in first
    second = client.get("/ui/browse?page=2").get_data(as_text=True)
    assert second.count('class="card entry"') == 6
    victim = photos[0].name
    listed = app.test_client().get("/list?limit=100").get_json()  # the API answers beside the UI
    assert victim in listed["result"]
    confirm = client.get(f"/ui/browse/delete?filepath={victim}&page=1")
    assert confirm.status_code == 200
    assert "Delete this image from the index?" in confirm.get_data(as_text=True)
    assert client.get("/count").get_json()["result"] == [30]  # asking deletes nothing
    thumb_dir = Path(app.config["MATCH_DATA_DIR"]) / "thumbs"
    assert len(list(thumb_dir.glob("*.jpg"))) == 30
    deleted = client.post("/ui/browse/delete", data={"filepath": victim, "page": "1",
                                                     "csrf_token": token(client)})
    assert deleted.status_code == 303 and "deleted=" in deleted.headers["Location"]
    assert client.get("/count").get_json()["result"] == [29]
    assert len(list(thumb_dir.glob("*.jpg"))) == 29  # its thumbnail went with it
    assert "Deleted <code>" in client.get(deleted.headers["Location"]).get_data(as_text=True)


def test_thumbnails_are_small_jpegs_and_optional(tmp_path: Path, photo_paths: list[Path]) -> None:
    from PIL import Image

    from match import service
    from match.store import open_store

    settings = {"MATCH_DATA_DIR": str(tmp_path), "MATCH_THUMBNAILS": True, "MATCH_THUMBNAIL_SIZE": 256}
    data = photo_paths[0].read_bytes()
    path = thumbs.save(settings, data)
    assert path is not None
    with Image.open(path) as image:
        assert image.format == "JPEG" and max(image.size) == 256
    assert path.stat().st_size < 40_000
    assert thumbs.save({**settings, "MATCH_THUMBNAILS": False}, b"x") is None
    assert thumbs.save(settings, b"not an image") is None  # never raises
    full = match_config.load({"MATCH_DATA_DIR": str(tmp_path / "d"), "MATCH_STORE": "local",
                              "MATCH_THUMBNAILS": False}, environ={})
    with open_store(full) as store:
        service.add(store, full, filepath="a", data=data)
    assert not (tmp_path / "d" / "thumbs").exists()


def test_compare_page(client: FlaskClient, photo_paths: list[Path]) -> None:
    data = photo_paths[3].read_bytes()
    response = post_form(client, "/ui/compare", [("image1", ("a.jpg", data, "image/jpeg")),
                                                 ("image2", ("b.jpg", resized_copy(data), "image/jpeg"))])
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    score = float(re.search(r"data-score>([0-9.]+)<", html).group(1))  # type: ignore[union-attr]
    assert score > 55 and "the same image" in html and html.count("data:image/jpeg;base64,") == 2


def test_crowd_dashboard_renders_empty(client: FlaskClient) -> None:
    page = client.get("/ui/crowd")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "No crowd tasks yet" in html and "<svg" in html


def test_with_api_keys_the_ui_asks_for_one(tmp_path: Path) -> None:
    import base64

    app = create_app({"MATCH_DATA_DIR": str(tmp_path), "MATCH_STORE": "local", "TESTING": True,
                      "MATCH_API_KEYS": "read-only-key-0000:ro,read-write-key-000:rw"})
    client = app.test_client()

    def basic(key: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"me:{key}".encode()).decode()}

    assert client.get("/ui/").status_code == 401
    assert client.get("/ui/").headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/ui/", headers=basic("not-a-key-at-all-00")).status_code == 401
    with client.get("/ui/static/match.css") as css:
        assert css.status_code == 200
    assert client.get("/ui/", headers=basic("read-only-key-0000")).status_code == 200
    assert client.get("/ui/browse", headers=basic("read-only-key-0000")).status_code == 200
    assert client.post("/ui/browse/add", headers=basic("read-only-key-0000")).status_code == 403
    assert client.post("/ui/browse/delete", headers=basic("read-only-key-0000")).status_code == 403
    assert client.post("/ui/browse/add", headers=basic("read-write-key-000")).status_code == 400  # no CSRF
    assert client.get("/count").status_code == 401  # the API itself still wants its header


def test_search_and_add_by_url(tmp_path: Path, photo_paths: list[Path], image_server: ImageServer) -> None:
    app = create_app({"MATCH_DATA_DIR": str(tmp_path), "MATCH_STORE": "local", "TESTING": True,
                      "MATCH_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"})
    client = app.test_client()
    data = photo_paths[8].read_bytes()
    url = image_server.put(f"web-views-{photo_paths[8].name}", data)
    added = client.post("/ui/browse/add", data={"url": url, "csrf_token": token(client)})
    assert added.status_code == 303
    found = client.post("/ui/search", data={"url": url, "all": "1"})
    assert found.status_code == 200
    html = found.get_data(as_text=True)
    assert f'<a href="{url}" rel="noreferrer noopener">{url}</a>' in html  # the filepath links to its source
    refused = client.post("/ui/search", data={"url": "http://169.254.169.254/latest/meta-data"})
    assert refused.status_code == 400 and 'role="alert"' in refused.get_data(as_text=True)
    close_store(app)


def test_a_thumbnail_shared_by_two_filepaths_stays_until_both_are_deleted(tmp_path: Path,
                                                                          photo_paths: list[Path]) -> None:
    from match import service
    from match.store import open_store

    settings = match_config.load({"MATCH_DATA_DIR": str(tmp_path), "MATCH_STORE": "local",
                                  "MATCH_THUMBNAILS": True}, environ={})
    data = photo_paths[0].read_bytes()
    with open_store(settings) as store:
        first = service.add(store, settings, filepath="a.jpg", data=data)
        service.add(store, settings, filepath="copy-of-a.jpg", data=data)
        assert thumbs.exists(settings, first.sha256)
        service.delete(store, "a.jpg", settings)
        assert thumbs.exists(settings, first.sha256)  # copy-of-a.jpg still shows it
        service.add(store, settings, filepath="a.jpg", data=data)
        service.delete(store, "a.jpg", settings)
        service.delete(store, "copy-of-a.jpg", settings)
        assert not thumbs.exists(settings, first.sha256)
    assert list((tmp_path / "thumbs").glob("*.jpg")) == []
    assert [p.name for p in (tmp_path / "thumbs" / "refs").iterdir() if not p.name.startswith(".lock")] == []


def test_odd_query_strings_get_pages_not_errors(client: FlaskClient) -> None:
    for filepath in ("a" * 2000, "a\x00b"):
        page = client.get("/ui/browse/delete", query_string={"filepath": filepath})
        assert page.status_code == 400 and page.mimetype == "text/html", page.status_code
    assert client.get("/ui/browse?added=%C2%B2").status_code == 200
    assert client.get("/ui/browse?added=" + "9" * 5000).status_code == 200


def test_ui_add_keeps_the_metadata_cap(tmp_path: Path, photo_paths: list[Path]) -> None:
    app = create_app({"MATCH_DATA_DIR": str(tmp_path / "data"), "MATCH_STORE": "local",
                      "MATCH_UI_SECRET": "test-secret-for-csrf", "MATCH_MAX_METADATA_BYTES": 100})
    try:
        client = app.test_client()
        refused = upload(client, photo_paths[:1], metadata=json.dumps({"note": "x" * 200}))
        assert refused.status_code == 400 and "MATCH_MAX_METADATA_BYTES" in refused.get_data(as_text=True)
        assert client.get("/count").get_json()["result"] == [0]
    finally:
        close_store(app)


def test_nothing_goes_to_the_crowd_on_a_form_with_errors(tmp_path: Path, photo_paths: list[Path]) -> None:
    from bench.serving import free_port

    # An endpoint nobody answers: a regression fails here (502), it never reaches MTurk.
    app = create_app({"MATCH_DATA_DIR": str(tmp_path / "data"), "MATCH_STORE": "local",
                      "MATCH_UI_SECRET": "test-secret-for-csrf",
                      "MATCH_CROWD_ENDPOINT": f"http://127.0.0.1:{free_port()}/"})
    try:
        client = app.test_client()
        assert upload(client, photo_paths[:2]).status_code == 303
        query = [("image", ("q.jpg", photo_paths[0].read_bytes(), "image/jpeg"))]
        html = post_form(client, "/ui/search", query).get_data(as_text=True)
        key = re.search(r'name="q" value="([0-9a-f]{32})"', html).group(1)  # type: ignore[union-attr]
        refused = client.post("/ui/crowd/verify", data={"csrf_token": token(client), "q": key,
                                                         "cutoff": "7", "top": "2"})
        assert refused.status_code == 400
        assert not (tmp_path / "data" / "crowd.sqlite3").exists()  # no task, no HIT
    finally:
        close_store(app)


def crop(data: bytes, box: tuple[float, float, float, float]) -> tuple[bytes, tuple[int, int]]:
    """The part ``box`` (fractions x0, y0, x1, y1) of a photo as JPEG, and the photo's size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        pixels = (round(box[0] * width), round(box[1] * height),
                  round(box[2] * width), round(box[3] * height))
        out = io.BytesIO()
        image.convert("RGB").crop(pixels).save(out, "JPEG", quality=90)
    return out.getvalue(), (width, height)


def region_boxes(html: str) -> list[dict[str, float]]:
    """The region boxes drawn on a page: their data-x/y/width/height, and the rectangles'."""
    boxes = []
    for svg in re.findall(r"<svg class=\"region\"[^>]*>.*?</svg>", html, re.S):
        numbers = {name: float(value)
                   for name, value in re.findall(r'data-(x|y|width|height)="([0-9.]+)"', svg)}
        rect = re.search(r'<rect class="line" x="([0-9.]+)%" y="([0-9.]+)%" width="([0-9.]+)%" '
                         r'height="([0-9.]+)%"', svg)
        assert rect, svg
        assert [float(v) for v in rect.groups()] == [numbers[k] for k in ("x", "y", "width", "height")]
        view = re.search(r'viewBox="0 0 (\d+) (\d+)"', svg)
        assert view, svg
        numbers["view_width"], numbers["view_height"] = float(view.group(1)), float(view.group(2))
        boxes.append(numbers)
    return boxes


def test_a_crop_is_found_and_its_region_drawn_on_the_stored_thumbnail(client: FlaskClient,
                                                                      photo_paths: list[Path]) -> None:
    photos = photo_paths[:6]
    assert upload(client, photos).status_code == 303
    # An off-centre crop keeping 65% x 70% of photo 2: the signature loses it.
    part = (0.10, 0.20, 0.75, 0.90)
    query, (width, height) = crop(photos[2].read_bytes(), part)
    page = post_form(client, "/ui/search", [("image", ("crop.jpg", query, "image/jpeg"))])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    paths = re.findall(r'<p class="path">([^<]+)</p>', html)
    assert paths and paths[0] == photos[2].name
    first = html[html.index('<li class="card hit"'):]
    first = first[:first.index("</li>")]
    assert "data-confirmed" in first and "local features" in first and "matching keypoints" in first
    boxes = region_boxes(first)
    assert len(boxes) == 1, first
    drawn = boxes[0]
    # Drawn in the stored image's pixels, over its thumbnail.
    assert (drawn["view_width"], drawn["view_height"]) == (width, height)
    assert 'src="/ui/thumbs/' in first and 'class="shown"' in first
    # Where the crop really is, within a few percent (RANSAC's estimate of the frame) ...
    expected = {"x": 100 * part[0], "y": 100 * part[1], "width": 100 * (part[2] - part[0]),
                "height": 100 * (part[3] - part[1])}
    for key, value in expected.items():
        assert abs(drawn[key] - value) < 3.0, (key, drawn, expected)
    # ... and exactly the region the JSON API reports, as percentages of the stored image.
    body, content_type = encode_multipart_formdata([("image", ("crop.jpg", query, "image/jpeg"))])
    hits = client.post("/search", data=body, content_type=content_type).get_json()["result"]
    hit = next(hit for hit in hits if hit["filepath"] == photos[2].name)
    x0, y0, x1, y1 = hit["region"]
    assert drawn == {"x": round(100 * x0 / width, 2), "y": round(100 * y0 / height, 2),
                     "width": round(100 * (x1 - x0) / width, 2), "height": round(100 * (y1 - y0) / height, 2),
                     "view_width": width, "view_height": height}
    assert f"{hit['inliers']} matching keypoints" in first


def test_compare_page_shows_the_region_of_the_second_image(client: FlaskClient,
                                                           photo_paths: list[Path]) -> None:
    data = photo_paths[3].read_bytes()
    part = (0.15, 0.15, 0.85, 0.85)  # 15% off each side
    query, (width, height) = crop(data, part)
    response = post_form(client, "/ui/compare", [("image1", ("crop.jpg", query, "image/jpeg")),
                                                 ("image2", ("whole.jpg", data, "image/jpeg"))])
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Local features confirm it" in html and 'class="verdict same"' in html
    assert int(re.search(r"data-inliers>(\d+)<", html).group(1)) >= 10  # type: ignore[union-attr]
    boxes = region_boxes(html)
    assert len(boxes) == 1
    assert (boxes[0]["view_width"], boxes[0]["view_height"]) == (width, height)
    for key, value in {"x": 15.0, "y": 15.0, "width": 70.0, "height": 70.0}.items():
        assert abs(boxes[0][key] - value) < 3.0, (key, boxes[0])
    # Two distinct photos: no region, and the page says they are not the same.
    other = post_form(client, "/ui/compare", [("image1", ("a.jpg", photo_paths[0].read_bytes(),
                                                           "image/jpeg")),
                                              ("image2", ("b.jpg", data, "image/jpeg"))])
    text = other.get_data(as_text=True)
    assert "<svg class=\"region\"" not in text and 'class="verdict different"' in text


def test_region_boxes_are_percentages_of_the_stored_image() -> None:
    from match.web import evidence

    assert evidence.box([192, 108, 1728, 972], 1920, 1080) == {"x": 10.0, "y": 10.0, "width": 80.0,
                                                               "height": 80.0, "area": 64.0}
    # Clipped to the image; empty or sizeless boxes are not drawn.
    assert evidence.box([-50, 540, 3000, 1080], 1920, 1080) == {"x": 0.0, "y": 50.0, "width": 100.0,
                                                                "height": 50.0, "area": 50.0}
    assert evidence.box([10, 10, 10, 500], 1920, 1080) is None
    assert evidence.box([0, 0, 5, 5], 0, 1080) is None
    # A 256 px thumbnail of a 1920 x 1080 image has its shape; a turned one does not.
    assert evidence.same_shape((256, 144), 1920, 1080)
    assert not evidence.same_shape((144, 256), 1920, 1080)


def test_with_local_features_off_hits_are_signature_hits(tmp_path: Path, photo_paths: list[Path]) -> None:
    app = create_app({"MATCH_DATA_DIR": str(tmp_path / "data"), "MATCH_STORE": "local", "TESTING": True,
                      "MATCH_UI_SECRET": "test-secret-for-csrf", "MATCH_LOCAL_FEATURES": False})
    try:
        client = app.test_client()
        assert upload(client, photo_paths[:3]).status_code == 303
        query = resized_copy(photo_paths[1].read_bytes())
        page = post_form(client, "/ui/search", [("image", ("q.jpg", query, "image/jpeg"))])
        html = page.get_data(as_text=True)
        assert page.status_code == 200
        assert re.findall(r'<p class="path">([^<]+)</p>', html)[0] == photo_paths[1].name
        assert 'data-found-by="signature"' in html and "data-confirmed" not in html
        assert "<svg class=\"region\"" not in html and "local features" not in html
        photo = photo_paths[1].read_bytes()
        compared = post_form(client, "/ui/compare", [("image1", ("a.jpg", photo, "image/jpeg")),
                                                     ("image2", ("b.jpg", photo, "image/jpeg"))])
        text = compared.get_data(as_text=True)
        assert compared.status_code == 200 and "the same image" in text and "Local features" not in text
    finally:
        close_store(app)
