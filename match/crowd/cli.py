"""``match crowd ...``: the crowd from the command line (the main CLI loads this group).

    match crowd server --port 8001 [--data-dir DIR] [--simulate "workers=20,accuracy=0.7"]
    match crowd put NAME URL1 URL2 [--test]     create a task (like PUT on the Tasks API)
    match crowd get NAME                        the task, synced
    match crowd sync [--loop SECONDS]           collect, review, pay, decide, extend, clean up
    match crowd gold add URL1 URL2 LABEL        a known-answer pair
    match crowd gold generate IMAGE...          generated gold (transformed copies, different images)
    match crowd report [--html FILE] [--png FILE] [--json]
    match crowd calibrate [--json]              the cutoff the crowd's verdicts support

The commands build the same :class:`~match.crowd.service.CrowdService` the HTTP API
uses, from the same settings, so both run the same code. Exit codes follow the main
CLI: 1 a refusal (budget, endpoint error), 2 a usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from match.errors import BadRequest, CrowdError, MatchError

__all__ = ["crowd"]

log = logging.getLogger(__name__)
R = TypeVar("R")

crowd = click.Group("crowd", help="Crowd verification through the MTurk API (or match's crowd server).")


def _service() -> Any:
    from match import config as match_config
    from match.crowd.service import CrowdService

    try:
        return CrowdService.from_config(match_config.load())
    except ValueError as exc:
        raise click.UsageError(f"configuration: {exc}") from exc


def _run(action: Callable[[], R]) -> R:
    try:
        return action()
    except BadRequest as exc:
        raise click.UsageError(exc.message) from exc
    except (CrowdError, MatchError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc.message}") from exc


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@crowd.command("server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8001, show_default=True, type=int, help="Port to bind.")
@click.option("--data-dir", default="crowd-data", show_default=True, type=click.Path(file_okay=False),
              help="Where the crowd server keeps its state (SQLite).")
@click.option("--simulate", default=None, help='Simulated workers, e.g. "workers=20,accuracy=0.7,spammers=0.2".')
@click.option("--balance", default="10000.00", show_default=True, help="Initial balance of a new requester.")
def server(host: str, port: int, data_dir: str, simulate: str | None, balance: str) -> None:
    """Run match's MTurk-compatible crowd server (requester API + worker pages)."""
    from match.crowd.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(host, port, data_dir, initial_balance=balance, simulate=simulate,
          ready=lambda url: click.echo(f"crowd server on {url} (MATCH_CROWD_ENDPOINT={url}); "
                                       f"workers sign in at {url}worker"))


@crowd.command("put")
@click.argument("name")
@click.argument("url1")
@click.argument("url2")
@click.option("--test", "mock", is_flag=True, help="Use image-similarity-test (mock result, no HIT).")
def put(name: str, url1: str, url2: str, mock: bool) -> None:
    """Create a task comparing the images at URL1 and URL2."""
    service = _service()
    function = "image-similarity-test" if mock else "image-similarity"
    body = {"input": {"image1": {"url": url1}, "image2": {"url": url2}}}
    _echo_json(_run(lambda: service.put_task(function, name, body)))


@crowd.command("get")
@click.argument("name")
@click.option("--test", "mock", is_flag=True, help="A task of image-similarity-test.")
def get(name: str, mock: bool) -> None:
    """Show a task (synced with the endpoint first while it is processing)."""
    service = _service()
    _echo_json(_run(lambda: service.get_task("image-similarity-test" if mock else "image-similarity", name)))


@crowd.command("sync")
@click.option("--loop", "interval", type=float, default=None, metavar="SECONDS",
              help="Keep syncing every SECONDS (a sidecar or a long-running CronJob); stop with SIGTERM.")
def sync(interval: float | None) -> None:
    """Collect answers, review and pay, decide or extend, and delete finished HITs."""
    service = _service()
    if interval is None:
        _echo_json(_run(lambda: service.sync().as_dict()))
        return
    if interval <= 0:
        raise click.UsageError("--loop needs a positive number of seconds")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        try:
            summary = service.sync().as_dict()
            click.echo(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary}))
        except MatchError as exc:  # the endpoint may be down for a while: keep looping
            click.echo(f"sync failed: {type(exc).__name__}: {exc.message}", err=True)
        try:
            stop.wait(interval)
        except KeyboardInterrupt:
            break


@crowd.group("gold")
def gold() -> None:
    """The known-answer pairs every HIT carries."""


@gold.command("add")
@click.argument("url1")
@click.argument("url2")
@click.argument("label", type=click.Choice(["same", "edited", "similar", "different"]))
def gold_add(url1: str, url2: str, label: str) -> None:
    """Add a known-answer pair."""
    service = _service()
    click.echo(_run(lambda: service.add_gold(url1, url2, label)))


@gold.command("generate")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def gold_generate(images: tuple[str, ...]) -> None:
    """Generated gold from image files: each vs a transformed copy, and vs another image."""
    service = _service()
    made = _run(lambda: service.generate_gold([Path(p).read_bytes() for p in images]))
    click.echo(f"{len(made)} gold pair(s)")


@gold.command("list")
def gold_list() -> None:
    """The gold set as JSON."""
    _echo_json(_service().state.gold())


def _load_ref(service: Any) -> Callable[[str], bytes | None]:
    def load(ref: str) -> bytes | None:
        try:
            if ref.startswith("media:"):
                return bytes(service.media.read(ref[len("media:"):]))
            from match.fetch import Fetcher

            cfg = service.config
            return Fetcher(timeout=float(cfg["MATCH_FETCH_TIMEOUT"]), max_bytes=int(cfg["MATCH_MAX_UPLOAD_BYTES"]),
                           allow_networks=cfg["MATCH_FETCH_ALLOW_NETWORKS"]).fetch(ref)
        except MatchError:
            return None

    return load


@crowd.command("report")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write the HTML report here.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="Also write a PNG contact sheet here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def report(html_path: str | None, png_path: str | None, as_json: bool) -> None:
    """Tasks, HITs, answers, workers, time, cost, cost per verified pair, gold accuracy."""
    from match.crowd.report import build_report, contact_sheet, render_html, render_text

    service = _service()
    data = build_report(service)
    if as_json:
        _echo_json(data)
    else:
        click.echo(render_text(data), nl=False)
    if html_path:
        Path(html_path).write_text(render_html(data, url_for_ref=service._url), encoding="utf-8")
        click.echo(f"wrote {html_path}", err=True)
    if png_path:
        Path(png_path).write_bytes(contact_sheet(data, _load_ref(service)))
        click.echo(f"wrote {png_path}", err=True)


@crowd.command("calibrate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--measure", is_flag=True, help="Fetch the images of pairs without a signature distance and "
              "measure it (else only pairs sent from /search, which carry one, are used).")
def calibrate(as_json: bool, measure: bool) -> None:
    """The signature-distance cutoff that best separates the crowd's same from different."""
    from match.crowd.report import build_report, calibrate as fit, calibration_points

    service = _service()
    data = build_report(service)
    if measure:
        load = _load_ref(service)
        from match import service as match_service

        for pair in data["pairs"]:
            if pair["distance"] is None and pair["state"] == "completed":
                first, second = load(pair["image1"]), load(pair["image2"])
                if first and second:
                    try:
                        pair["distance"] = match_service.compare(service.config, first, second).distance
                    except MatchError:
                        continue
    result = fit(calibration_points(data))
    if as_json:
        _echo_json(result)
        return
    if result["cutoff"] is None:
        click.echo(f"not enough evidence: {result['same']} same and {result['different']} different "
                   "completed pairs with a signature distance (need at least one of each)")
        sys.exit(1)
    logistic = result["logistic"] or {}
    click.echo(f"{result['n']} pairs ({result['same']} same, {result['different']} different)\n"
               f"best cutoff: distance <= {result['cutoff']} is the same picture "
               f"({result['accuracy']:.1%} right, balanced {result['balanced_accuracy']:.1%})\n"
               f"logistic P(same | distance) = 0.5 at distance {logistic.get('cutoff')}\n"
               f"set MATCH_CUTOFF={result['cutoff']} to follow the crowd")
