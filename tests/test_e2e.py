"""End to end: the real server (``match serve`` under gunicorn, 4 workers) driven over
HTTP the way a curl user drives it, on the embedded store and on Elasticsearch.

The server is a subprocess on a free loopback port with its own MATCH_DATA_DIR (or
Elasticsearch index); images come by upload and by ``url`` from the loopback
``image_server``. Workers are separate processes, so these tests also show that the
store is shared: parallel adds of one filepath leave one record, and an add through
one worker is searchable at once through the others.
"""

from __future__ import annotations

import concurrent.futures
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from bench.serving import drop_index, free_port
from tests.conftest import ImageServer
from tests.servers import Server, serve

WORKERS = 4
PHOTOS = 20


def resized_copy(data: bytes) -> bytes:
    """A smaller, re-compressed copy (60 %, JPEG quality 70)."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((image.width * 3 // 5, image.height * 3 // 5),
                                            Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=70)
        return buffer.getvalue()


@pytest.fixture(scope="module",
                params=["local", pytest.param("elasticsearch", marks=pytest.mark.elasticsearch)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``match serve --workers 4`` on a fresh store of each backend."""
    directory = tmp_path_factory.mktemp(f"e2e-{request.param}")
    settings = {"MATCH_STORE": request.param, "MATCH_DATA_DIR": str(directory / "data"),
                "MATCH_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "MATCH_MAX_UPLOAD_BYTES": str(8 << 20)}
    index = f"match-e2e-{uuid.uuid4().hex[:12]}"
    if request.param == "elasticsearch":
        settings.update({"ELASTICSEARCH_URL": request.getfixturevalue("es_url"), "MATCH_INDEX": index})
    try:
        with serve(directory, settings, workers=WORKERS) as running:  # fails unless it exits cleanly
            yield running
    finally:
        if request.param == "elasticsearch":
            drop_index(settings["ELASTICSEARCH_URL"], index)
    assert '"method": "POST", "path": "/add"' in running.log_text()  # JSON access log on


@pytest.fixture(scope="module")
def corpus(photo_paths: list[Path]) -> list[tuple[str, bytes]]:
    """20 real photos: (name, bytes)."""
    step = max(1, len(photo_paths) // PHOTOS)
    return [(path.name, path.read_bytes()) for path in photo_paths[::step][:PHOTOS]]


def test_ping_and_ready(server: Server) -> None:
    assert server.get("/ping").json() == {"status": "ok", "error": [], "method": "ping", "result": []}
    assert server.post("/ping").status_code == 200
    assert server.get("/ready").status_code == 200


def test_add_search_compare_list_delete(server: Server, corpus: list[tuple[str, bytes]],
                                        image_server: ImageServer) -> None:
    before = server.count()
    filepaths = []
    for index, (name, data) in enumerate(corpus):
        filepath = f"e2e/{index:02d}-{name}"
        if index % 2:  # curl -F image=@photo.jpg -F filepath=...
            response = server.post("/add", files={"image": (name, data)}, data={"filepath": filepath,
                                   "metadata": f'{{"index": {index}}}'})
        else:  # curl -d url=... -d filepath=...
            url = image_server.put(f"e2e-{uuid.uuid4().hex[:8]}-{name}", data)
            response = server.post("/add", data={"url": url, "filepath": filepath,
                                                 "metadata": f'{{"index": {index}}}'})
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "error": [], "method": "add", "result": []}
        filepaths.append(filepath)
    assert server.count() == before + len(corpus)

    for index, (_, data) in enumerate(corpus):
        hits = server.search(resized_copy(data))
        assert hits and hits[0]["filepath"] == filepaths[index], (index, hits[:3])
        assert hits[0]["metadata"]["index"] == index and len(hits[0]["metadata"]["sha256"]) == 64

    url1 = image_server.put(f"cmp-{uuid.uuid4().hex[:8]}.jpg", corpus[0][1])
    compared = server.post("/compare", data={"url1": url1},
                           files={"image2": ("copy.jpg", resized_copy(corpus[0][1]))})
    assert compared.status_code == 200, compared.text
    assert 55 < compared.json()["result"][0]["score"] < 100

    listed = server.get("/list", params={"limit": 1000}).json()["result"]
    assert sorted(filepaths) == [path for path in listed if path.startswith("e2e/")]
    assert listed == sorted(listed)

    deleted = requests.delete(server.url + "/delete", data={"filepath": filepaths[3]}, timeout=30)
    assert deleted.status_code == 200, deleted.text
    assert server.count() == before + len(corpus) - 1
    assert all(hit["filepath"] != filepaths[3] for hit in server.search(corpus[3][1]))
    gone = requests.delete(server.url + "/delete", data={"filepath": filepaths[3]}, timeout=30)
    assert gone.status_code == 404 and gone.json()["status"] == "fail"


def test_bad_inputs_get_the_envelope(server: Server, corpus: list[tuple[str, bytes]]) -> None:
    before = server.count()
    cases = [
        (server.post("/add", files={"image": ("a.jpg", corpus[0][1])}), 400),  # no filepath
        (server.post("/add", files={"image": ("a.jpg", corpus[0][1])},
                     data={"filepath": "x", "metadata": "{nope"}), 400),
        (server.post("/add", files={"image": ("a.txt", b"hello")}, data={"filepath": "x"}), 415),
        (server.post("/add", files={"image": ("a.jpg", corpus[0][1][:3000])}, data={"filepath": "x"}), 422),
        (server.post("/add", files={"image": ("big.jpg", b"\xff" * (9 << 20))}, data={"filepath": "x"}), 413),
        (server.post("/add", data={"url": f"http://127.0.0.1:{free_port()}/a.jpg", "filepath": "x"}), 502),
        (server.post("/search", files={"image": ("a.jpg", corpus[0][1])}, data={"all_orientations": "sure"}),
         400),
        (server.get("/list", params={"offset": "-3"}), 400),
        (server.get("/nope"), 404),
        (server.get("/add"), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert body["status"] == "fail" and len(body["error"]) == 1 and body["result"] == []
    assert server.count() == before


def test_parallel_adds_of_one_filepath_leave_one_record(server: Server,
                                                         corpus: list[tuple[str, bytes]]) -> None:
    before = server.count()

    def add(index: int) -> int:
        name, data = corpus[index % len(corpus)]
        return server.post("/add", files={"image": (name, data)}, data={"filepath": "race.jpg"}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(add, range(16)))
    assert statuses == [200] * 16
    assert server.count() == before + 1
    listed = server.get("/list", params={"limit": 1000}).json()["result"]
    assert listed.count("race.jpg") == 1


def test_an_add_is_searchable_at_once_through_every_worker(server: Server,
                                                           corpus: list[tuple[str, bytes]]) -> None:
    for round_ in range(4):
        name, data = corpus[round_ + 10]
        filepath = f"fresh/{round_}-{uuid.uuid4().hex[:6]}.jpg"
        assert server.post("/add", files={"image": (name, data)}, data={"filepath": filepath}).ok
        # Each search is a new connection: gunicorn hands them to whichever worker accepts.
        for _ in range(3 * WORKERS):
            hits = server.search(data, all_orientations="false")
            assert filepath in [hit["filepath"] for hit in hits], (round_, hits[:3])
