"""Search integration (verify the top matches of a query), the report, the contact sheet,
calibration, and the ``match crowd`` commands; real photographs, crowd server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from match.crowd import tasks as T
from match.crowd.cli import crowd
from match.crowd.report import (
    build_report,
    calibrate,
    calibration_points,
    contact_sheet,
    render_html,
    render_text,
)
from match.crowd.workers import SimulationSettings
from tests.crowd.harness import CrowdHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[CrowdHarness]:
    h = CrowdHarness(tmp_path, simulation=SimulationSettings(workers=8, accuracy=0.9, latency=0, seed=2))
    yield h
    h.close()


def test_verify_matches_keeps_the_query_generates_gold_and_reports(
    harness: CrowdHarness, photo_paths: list[Path]
) -> None:
    service = harness.service
    query = photo_paths[0].read_bytes()
    # Gold from real photos: transformed copies ("edited") and clearly different pairs.
    made = service.generate_gold([p.read_bytes() for p in photo_paths[1:5]])
    assert any(g["label"] == "different" for g in service.state.gold())
    assert len(made) >= 4
    matches = [
        {"filepath": f"http://images.test/indexed/{i}.jpg", "distance": d, "metadata": {}}
        for i, d in enumerate([0.1, 0.3, 0.6, 0.7])
    ]
    matches.append({"filepath": "local/no-url.jpg", "distance": 0.2, "metadata": {}})
    sent = service.verify_matches(query, matches, top=5)
    assert [e.get("state") for e in sent[:4]] == ["processing"] * 4
    assert "error" in sent[4]
    # The query image is kept and reachable through a signed URL in the question.
    task = service.state.task("image-similarity", sent[0]["taskName"])
    assert task is not None and task["input"]["image1"]["url"].startswith("media:")
    # Truth for the oracle: near matches are the same picture.
    for entry, match in zip(sent[:4], matches, strict=False):
        row = service.state.task("image-similarity", entry["taskName"])
        assert row is not None
        truth = "edited" if match["distance"] < 0.5 else "different"
        harness.truth[T.pair_id("p", row["input"]["image1"]["url"], row["input"]["image2"]["url"])] = truth
    harness.run()
    verdicts = service.verdicts(query, [m["filepath"] for m in matches])
    assert set(verdicts) == {m["filepath"] for m in matches[:4]}
    assert [verdicts[m["filepath"]]["match"] for m in matches[:4]] == [True, True, False, False]
    assert service.verify_matches(query, matches[:1], top=1)[0]["state"] == "completed"  # no new task

    report = build_report(service)
    totals = report["totals"]
    assert totals["completed"] == 4 and totals["cost_cents"] > 0 and totals["workers"] > 0
    assert totals["cost_per_verified_pair_cents"] == pytest.approx(totals["cost_cents"] / 4)
    text = render_text(report)
    assert "per verified" in text and "gold accuracy per worker" in text
    page = render_html(report, url_for_ref=service._url)
    assert "/crowd/media/" in page and "sig=" in page
    png = contact_sheet(report, lambda ref: service.media.read(ref[6:]) if ref.startswith("media:") else None)
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    fit = calibrate(calibration_points(report))
    assert fit["n"] == 4 and 0.3 <= fit["cutoff"] <= 0.6 and fit["accuracy"] == 1.0


def test_calibrate_finds_the_separating_cutoff() -> None:
    points = [(d / 100, d < 40) for d in range(5, 95, 3)]
    points += [(0.38, False), (0.45, True)]  # a little disagreement near the boundary
    fit = calibrate(points)
    assert 0.36 <= fit["cutoff"] <= 0.46
    assert fit["accuracy"] >= 0.9
    assert 0.3 <= fit["logistic"]["cutoff"] <= 0.5
    assert calibrate([(0.1, True)])["cutoff"] is None


def test_cli_report_and_mock_task(
    harness: CrowdHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in harness.config.items():
        if name.startswith("MATCH_CROWD_") or name == "MATCH_DATA_DIR":
            monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    runner = CliRunner()
    done = runner.invoke(
        crowd, ["put", "--test", "m1", "http://images.test/a.jpg", "http://images.test/b.jpg"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["state"] == "completed"
    harness.service.add_gold("http://images.test/g1.jpg", "http://images.test/g2.jpg", "different")
    put = runner.invoke(crowd, ["put", "r1", "http://images.test/a.jpg", "http://images.test/b.jpg"])
    assert put.exit_code == 0, put.output
    harness.label("http://images.test/a.jpg", "http://images.test/b.jpg", "same")
    harness.work()
    synced = runner.invoke(crowd, ["sync"])
    assert synced.exit_code == 0 and json.loads(synced.output)["collected"] == 3
    html, png = tmp_path / "report.html", tmp_path / "sheet.png"
    result = runner.invoke(crowd, ["report", "--html", str(html), "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "tasks" in result.output and html.exists() and png.read_bytes().startswith(b"\x89PNG")
    calibrated = runner.invoke(crowd, ["calibrate"])
    assert calibrated.exit_code == 1 and "not enough evidence" in calibrated.output
    with monkeypatch.context() as patched:
        patched.setenv("MATCH_CROWD_BUDGET", "0.01")
        refused = runner.invoke(crowd, ["put", "r2", "http://images.test/c.jpg", "http://images.test/d.jpg"])
    assert refused.exit_code == 1 and "BudgetExceeded" in refused.output


def test_search_verify_through_the_match_app(harness: CrowdHarness, photo_paths: list[Path]) -> None:
    """POST /search verify=true on the real app: tasks for the top matches, then verdicts."""
    import io

    from match.app import create_app

    app = create_app({**harness.config, "MATCH_STORE": "local"})
    client = app.test_client()
    photo = photo_paths[6].read_bytes()
    added = client.post(
        "/add", data={"filepath": "http://images.test/indexed/a.jpg", "image": (io.BytesIO(photo), "a.jpg")}
    )
    assert added.status_code == 200, added.get_json()
    harness.service.add_gold("http://images.test/g/1a.jpg", "http://images.test/g/1b.jpg", "different")
    first = client.post(
        "/search", data={"image": (io.BytesIO(photo), "q.jpg"), "verify": "true", "verify_top": "1"}
    )
    assert first.status_code == 200, first.get_json()
    hit = first.get_json()["result"][0]
    assert hit["crowd"]["state"] == "processing"
    task = harness.service.state.task("image-similarity", hit["crowd"]["taskName"])
    assert task is not None
    harness.truth[T.pair_id("p", task["input"]["image1"]["url"], task["input"]["image2"]["url"])] = "same"
    harness.run()
    again = client.post("/search", data={"image": (io.BytesIO(photo), "q.jpg")}).get_json()["result"][0]
    assert again["crowd"]["state"] == "completed" and again["crowd"]["match"] is True
    report = client.get("/crowd/report")
    assert report.status_code == 200 and b"match crowd report" in report.data


def test_cli_calibrate_measures_distances_of_api_pairs(
    harness: CrowdHarness, photo_paths: list[Path], image_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pairs made through the Tasks API carry no distance: --measure fetches and signs them."""
    from match.crowd.media import transformed_copy

    for name, value in harness.config.items():
        if name.startswith("MATCH_CROWD_") or name == "MATCH_DATA_DIR":
            monkeypatch.setenv(name, value if isinstance(value, str) else json.dumps(value))
    monkeypatch.setenv("MATCH_FETCH_ALLOW_NETWORKS", "127.0.0.0/8")
    harness.service.add_gold("http://images.test/g1.jpg", "http://images.test/g2.jpg", "different")
    for i in range(6):
        original = photo_paths[10 + i].read_bytes()
        url1 = image_server.put(f"cal/{i}.jpg", original)
        same = i % 2 == 0
        other = transformed_copy(original) if same else photo_paths[40 + i].read_bytes()
        url2 = image_server.put(f"cal/{i}-other.jpg", other)
        harness.label(url1, url2, "edited" if same else "different")
        harness.service.put_task(
            "image-similarity", f"cal-{i}", {"input": {"image1": {"url": url1}, "image2": {"url": url2}}}
        )
    harness.run()
    result = CliRunner().invoke(crowd, ["calibrate", "--measure", "--json"])
    assert result.exit_code == 0, result.output
    fit = json.loads(result.output)
    assert fit["n"] == 6 and fit["same"] == 3 and fit["accuracy"] == 1.0
    assert 0.0 < fit["cutoff"] < 0.7
