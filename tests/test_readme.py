"""README.md's curl examples work as written.

The blocks marked ``<!-- readme-test: ... -->`` are run line by line with bash, in a
directory holding a real photo as ``photo.jpg``, against a real ``match serve``. Only
the ports change (8000 and 8080 become free ports) and lines ending in ``&`` (the
servers the README starts in the background) are started by this test instead.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Server, serve

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(name: str) -> list[str]:
    """The lines of the sh block after ``<!-- readme-test: name -->``."""
    match = re.search(rf"<!-- readme-test: {name} -->\n```sh\n(.*?)```", README, re.S)
    assert match, f"README.md lost its '{name}' example block"
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path: Path, photo_paths: list[Path]) -> Path:
    shutil.copyfile(photo_paths[0], tmp_path / "photo.jpg")
    return tmp_path


@pytest.fixture
def file_server(workdir: Path) -> Iterator[int]:
    """``python3 -m http.server`` over the work directory, on a free port."""
    handler = functools.partial(_Quiet, directory=str(workdir))
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def run_line(line: str, workdir: Path, ports: dict[str, int]) -> str:
    """Run one README line with bash (ports rewritten); return what it printed."""
    for written, actual in ports.items():
        line = line.replace(f"127.0.0.1:{written}", f"127.0.0.1:{actual}")
    done = subprocess.run(["bash", "-c", line], cwd=workdir, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"{line}\n{done.stderr}"
    return done.stdout


def run_block(lines: list[str], workdir: Path, server: Server, file_port: int) -> list[dict[str, Any]]:
    """Run each line; return the JSON envelopes the curl lines printed."""
    ports = {"8000": int(server.url.rsplit(":", 1)[1]), "8080": file_port}
    envelopes = []
    for line in lines:
        if line.rstrip().endswith("&"):
            continue  # a background server: the fixtures run it
        output = run_line(line, workdir, ports)
        if line.startswith("curl"):
            envelope = json.loads(output)
            assert envelope["status"] == "ok", f"{line}\n{output}"
            envelopes.append(envelope)
    return envelopes


def test_upload_examples(workdir: Path, file_server: int) -> None:
    lines = readme_block("upload")
    with serve(workdir, {"MATCH_DATA_DIR": str(workdir / "data")}) as server:
        envelopes = run_block(lines, workdir, server, file_server)
    by_method: dict[str, list[dict[str, Any]]] = {}
    for envelope in envelopes:
        by_method.setdefault(envelope["method"], []).append(envelope)
    assert set(by_method) == {"ping", "add", "search", "compare", "count", "list", "delete", "ready"}
    for search in by_method["search"]:
        assert search["result"][0]["filepath"] == "photos/photo.jpg"
        assert search["result"][0]["metadata"]["source"] == "camera"
    assert by_method["compare"][0]["result"][0]["score"] > 80
    assert by_method["count"][0]["result"] == [1]
    assert by_method["list"][0]["result"] == ["photos/photo.jpg"]


def test_url_examples(workdir: Path, file_server: int) -> None:
    lines = readme_block("url")
    assert lines[0].startswith("python3 -m http.server 8080 --bind 127.0.0.1 &")
    assert lines[1] == "MATCH_FETCH_ALLOW_NETWORKS=127.0.0.0/8 match serve &"
    run_line(readme_block("upload")[0], workdir, {})  # the line that makes copy.jpg
    settings = {"MATCH_DATA_DIR": str(workdir / "data"), "MATCH_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
    with serve(workdir, settings) as server:
        add, search, compare = run_block(lines, workdir, server, file_server)
    assert search["result"][0]["filepath"] == f"http://127.0.0.1:{file_server}/photo.jpg"
    assert compare["result"][0]["score"] > 80
