"""The ``match`` command line: every command through click's CliRunner on the embedded
store, exit codes, and one real ``python -m match add DIR`` subprocess on photos."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from match.cli import EXIT_FAILED, EXIT_STORE_UNAVAILABLE, EXIT_USAGE, cli

ROOT = Path(__file__).resolve().parent.parent


def resized_copy(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((image.width * 3 // 5, image.height * 3 // 5))
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=70)
        return buffer.getvalue()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Settings of a fresh embedded store, as environment variables."""
    return {"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path / "data"), "MATCH_CONFIG": "",
            "MATCH_LOG_LEVEL": "error"}


@pytest.fixture
def photo_dir(tmp_path: Path, photo_paths: list[Path]) -> Path:
    """photos/ with 4 photos at the top, 2 in a subdirectory, a note and a broken JPEG."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for index, path in enumerate(photo_paths[:6]):
        target = root / ("sub" if index >= 4 else "") / f"p{index}.jpg"
        target.write_bytes(path.read_bytes())
    (root / "notes.txt").write_text("not an image, and not picked up from a directory")
    (root / "broken.jpg").write_bytes(photo_paths[6].read_bytes()[:2000])
    return root


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_add_search_compare_count_list_delete(env: dict[str, str], photo_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # filepaths are the paths as given: photos/...
    added = run(env, "add", "photos", "--metadata", '{"source": "cli"}', "--jobs", "2")
    assert added.exit_code == 0, added.output
    assert "added 6, skipped 1" in added.stderr
    assert "broken.jpg" in added.stderr  # the reason is listed

    assert run(env, "count").stdout.strip() == "6"
    listed = run(env, "list").stdout.split()
    assert listed == sorted(listed) and "photos/sub/p4.jpg" in listed and len(listed) == 6
    assert run(env, "list", "--offset", "2", "--limit", "2").stdout.split() == listed[2:4]

    copy = tmp_path / "copy.jpg"
    copy.write_bytes(resized_copy((photo_dir / "p1.jpg").read_bytes()))
    found = run(env, "search", str(copy))
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert hits[0]["filepath"] == "photos/p1.jpg" and hits[0]["metadata"]["source"] == "cli"
    assert "sha256" in hits[0]["metadata"]
    assert len(json.loads(run(env, "search", str(copy), "--limit", "1").stdout)) == 1

    compared = run(env, "compare", str(photo_dir / "p1.jpg"), str(copy))
    assert compared.exit_code == 0
    result = json.loads(compared.stdout)
    assert 55 < result["score"] < 100 and result["distance"] == pytest.approx(1 - result["score"] / 100)

    thumbs = tmp_path / "data" / "thumbs"
    assert len(list(thumbs.glob("*.jpg"))) == 6  # made by the signing processes, claimed once stored
    assert run(env, "delete", "photos/p1.jpg").exit_code == 0
    assert run(env, "count").stdout.strip() == "5"
    assert len(list(thumbs.glob("*.jpg"))) == 5  # its thumbnail went with it
    missing = run(env, "delete", "photos/p1.jpg")
    assert missing.exit_code == EXIT_FAILED and "photos/p1.jpg" in missing.stderr


def test_add_a_file_overwrites(env: dict[str, str], photo_paths: list[Path]) -> None:
    path = str(photo_paths[0])
    assert run(env, "add", path).exit_code == 0
    assert run(env, "add", path, "--jobs", "1").exit_code == 0
    assert run(env, "count").stdout.strip() == "1"
    assert run(env, "list").stdout.strip() == Path(path).as_posix()


def test_add_nothing_addable_fails(env: dict[str, str], tmp_path: Path) -> None:
    note = tmp_path / "note.jpg"
    note.write_text("hello")
    result = run(env, "add", str(note))
    assert result.exit_code == EXIT_FAILED
    assert "skipped 1" in result.stderr and "nothing was added" in result.stderr


def test_single_image_commands_fail_cleanly(env: dict[str, str], tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    missing = str(tmp_path / "none")
    for args in (["search", str(note)], ["compare", str(note), str(note)], ["search", missing]):
        result = run(env, *args)
        assert result.exit_code == EXIT_FAILED, (args, result.output)
        assert result.stderr.startswith("Error:") and "Traceback" not in result.output


def test_bad_usage_and_bad_settings_exit_2(env: dict[str, str]) -> None:
    assert run(env, "add").exit_code == EXIT_USAGE
    assert run(env, "list", "--limit", "0").exit_code == EXIT_USAGE
    bad = run({**env, "MATCH_CUTOFF": "abc"}, "count")
    assert bad.exit_code == EXIT_USAGE and "MATCH_CUTOFF" in bad.stderr
    assert run(env, "add", "--metadata", "[1]", ".").exit_code == EXIT_FAILED


def test_store_unavailable_exits_3(env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = {**env, "MATCH_STORE": "elasticsearch", "ELASTICSEARCH_URL": f"http://127.0.0.1:{port}",
            "MATCH_ES_TIMEOUT": "1"}
    result = run(down, "count")
    assert result.exit_code == EXIT_STORE_UNAVAILABLE, result.output
    assert "unavailable" in result.stderr


def test_help_lists_the_commands(env: dict[str, str]) -> None:
    text = run(env, "--help").stdout
    for command in ("serve", "add", "search", "compare", "count", "list", "delete"):
        assert command in text
    assert ("crowd" in text) == (importlib.util.find_spec("match.crowd.cli") is not None)
    serve_help = run(env, "serve", "--help").stdout
    assert "--workers" in serve_help and "--port" in serve_help


def test_real_subprocess_add_dir(env: dict[str, str], photo_dir: Path, tmp_path: Path) -> None:
    environ = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    added = subprocess.run([sys.executable, "-m", "match", "add", str(photo_dir)], env=environ,
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "added 6, skipped 1" in added.stderr
    counted = subprocess.run([sys.executable, "-m", "match", "count"], env=environ, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
    assert counted.returncode == 0 and counted.stdout.strip() == "6"


def test_crowd_group_is_loaded_from_match_crowd_cli(env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract with the crowd module: match/crowd/cli.py defines a click group ``crowd``."""
    import importlib.machinery
    import types

    import click

    module = types.ModuleType("match.crowd.cli")
    module.__spec__ = importlib.machinery.ModuleSpec("match.crowd.cli", loader=None)
    group = click.Group("crowd", help="Crowd verification.")

    @group.command()
    def hello() -> None:
        click.echo("hello from crowd")

    module.crowd = group  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "match.crowd.cli", module)
    assert "crowd" in run(env, "--help").stdout
    assert run(env, "crowd", "hello").stdout.strip() == "hello from crowd"


def test_reindex_backfills_local_features(env: dict[str, str], photo_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = dict(env, MATCH_LOCAL_FEATURES="false")  # an index made without local features
    assert run(old, "add", "photos", "--jobs", "1").exit_code == 0
    picture = Image.open(photo_dir / "p1.jpg").convert("RGB")
    width, height = picture.size
    crop = tmp_path / "crop.jpg"  # the central quarter: its signature is another image's
    picture.crop((width // 4, height // 4, width * 3 // 4, height * 3 // 4)).save(crop, quality=90)
    assert json.loads(run(env, "search", str(crop)).stdout) == []

    result = run(env, "reindex", "photos", str(crop), "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "reindexed 6, skipped 2; 0 stored images still have no local features" in result.stderr
    assert "crop.jpg: not in the index" in result.stderr  # and broken.jpg could not be read
    hits = json.loads(run(env, "search", str(crop)).stdout)
    assert [(hit["filepath"], hit["found_by"]) for hit in hits] == [("photos/p1.jpg", ["features"])]
    x0, y0, x1, y1 = hits[0]["region"]
    assert abs(x0 - width / 4) < width * 0.03 and abs(y0 - height / 4) < height * 0.03
    assert abs(x1 - width * 3 / 4) < width * 0.03 and abs(y1 - height * 3 / 4) < height * 0.03
    again = run(env, "reindex", "photos")  # nothing left to do
    assert "reindexed 0" in again.stderr
