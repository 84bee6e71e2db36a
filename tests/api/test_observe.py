"""Access log lines and /metrics in one process (multiprocess mode: tests/test_hardening.py)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask.testing import FlaskClient

from match import metrics


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_access_log_is_json_without_query_strings(client: FlaskClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="match.access"):
        client.get("/list?limit=5&token=secret-value")
        client.get("/no/such/route?x=1")
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "match.access"]
    listed, unknown = lines[-2], lines[-1]
    assert set(listed) >= {"ts", "method", "path", "route", "status", "duration_ms", "bytes", "remote_addr"}
    assert listed["path"] == "/list" and listed["route"] == "/list" and listed["status"] == 200
    assert listed["bytes"] > 0 and listed["duration_ms"] >= 0 and listed["method"] == "GET"
    assert unknown["route"] == "<unmatched>" and unknown["status"] == 404
    assert "secret-value" not in caplog.text


def test_metrics_count_requests_latency_and_store_errors(client: FlaskClient) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    for _ in range(3):
        client.get("/count")
    client.get("/list?offset=-1")
    after = client.get("/metrics")
    assert after.status_code == 200 and after.mimetype == "text/plain"
    text = after.get_data(as_text=True)
    labels = {"method": "GET", "route": "/count", "status": "200"}
    assert sample(text, "match_http_requests_total", **labels) - sample(before, "match_http_requests_total",
                                                                        **labels) == 3
    bad = {"method": "GET", "route": "/list", "status": "400"}
    assert (sample(text, "match_http_requests_total", **bad)
            - sample(before, "match_http_requests_total", **bad)) == 1
    timed = {"method": "GET", "route": "/count"}
    assert (sample(text, "match_http_request_duration_seconds_count", **timed)
            - sample(before, "match_http_request_duration_seconds_count", **timed)) == 3
    assert "match_store_errors_total" in text and "match_crowd_spend_dollars_total" in text


def test_crowd_spend_and_store_error_counters() -> None:
    before = metrics.CROWD_SPEND._value.get()
    metrics.crowd_spend(0.25)
    metrics.crowd_task("created")
    metrics.store_error("StoreUnavailable")
    assert metrics.CROWD_SPEND._value.get() == pytest.approx(before + 0.25)
    text = metrics.exposition().decode()
    assert sample(text, "match_store_errors_total", error="StoreUnavailable") >= 1
    assert sample(text, "match_crowd_tasks_total", state="created") >= 1
    released = metrics.CROWD_RELEASED._value.get()
    metrics.crowd_spend(-1)  # a release: counted apart, spend never goes down
    assert metrics.CROWD_RELEASED._value.get() == pytest.approx(released + 1)
    assert metrics.CROWD_SPEND._value.get() == pytest.approx(before + 0.25)


def test_metrics_can_be_turned_off(tmp_path: object) -> None:
    from match.app import create_app

    app = create_app({"MATCH_STORE": "local", "MATCH_DATA_DIR": str(tmp_path), "MATCH_METRICS": "false"})
    response = app.test_client().get("/metrics")
    assert response.status_code == 404 and response.json["status"] == "fail"


def test_made_up_methods_share_one_label(client: FlaskClient) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    for method in ("FOOBAR", "BAZQUX"):
        assert client.open("/add", method=method).status_code == 405
    text = client.get("/metrics").get_data(as_text=True)
    assert "FOOBAR" not in text and "BAZQUX" not in text
    other = {"method": "other", "route": "<unmatched>", "status": "405"}
    assert sample(text, "match_http_requests_total", **other) - sample(before, "match_http_requests_total",
                                                                       **other) == 2
