"""``match crowd ...``: the crowd from the command line (the main CLI loads this group).

    match crowd server --port 8001 [--data-dir DIR] [--simulate "workers=20,accuracy=0.7"]
    match crowd put NAME URL1 URL2 [--test]     create a task (like PUT on the Tasks API)
    match crowd batch PAIRS.csv                 one task per row, all or none (budget)
    match crowd truth PAIRS.csv > truth.json    labels for simulated workers (pairs + gold)
    match crowd get NAME                        the task, synced
    match crowd sync [--loop SECONDS]           collect, review, pay, decide, extend, clean up
    match crowd review [--approve ID] [--reject ID --feedback TEXT] [--all]
                                                decide by hand (MATCH_CROWD_AUTO_REVIEW=false)
    match crowd gold add URL1 URL2 LABEL        a known-answer pair
    match crowd gold generate IMAGE...          generated gold (transformed copies, different images)
    match crowd report [--html FILE] [--png FILE] [--json]
    match crowd calibrate [--json] [--measure]  the cutoff the crowd's verdicts support
    match crowd simulate [--simulate SPEC] [--pairs N | --pairs-csv FILE]
                                                the whole loop offline, with simulated workers

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
@click.option(
    "--data-dir",
    default="crowd-data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the crowd server keeps its state (SQLite).",
)
@click.option(
    "--simulate", default=None, help='Simulated workers, e.g. "workers=20,accuracy=0.7,spammers=0.2".'
)
@click.option("--balance", default="10000.00", show_default=True, help="Initial balance of a new requester.")
def server(host: str, port: int, data_dir: str, simulate: str | None, balance: str) -> None:
    """Run match's MTurk-compatible crowd server (requester API + worker pages)."""
    from match.crowd.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(
        host,
        port,
        data_dir,
        initial_balance=balance,
        simulate=simulate,
        ready=lambda url: click.echo(
            f"crowd server on {url} (MATCH_CROWD_ENDPOINT={url}); workers sign in at {url}worker"
        ),
    )


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
@click.option(
    "--loop",
    "interval",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Keep syncing every SECONDS (a sidecar or a long-running CronJob); stop with SIGTERM.",
)
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


@crowd.command("review")
@click.option("--approve", "approve_ids", multiple=True, metavar="ASSIGNMENT_ID", help="Approve these.")
@click.option("--reject", "reject_ids", multiple=True, metavar="ASSIGNMENT_ID", help="Reject these.")
@click.option(
    "--feedback", default=None, help="Feedback sent with --approve/--reject (default: the gold verdict)."
)
@click.option("--all", "decide_all", is_flag=True, help="Decide every pending one by the automatic policy.")
def review(
    approve_ids: tuple[str, ...], reject_ids: tuple[str, ...], feedback: str | None, decide_all: bool
) -> None:
    """Approve or reject collected work by hand (with MATCH_CROWD_AUTO_REVIEW=false).

    Without options, lists the assignments waiting for a decision; look at the pairs in
    `match crowd report --html` first. Bonuses and notifications go out on the next sync.
    """
    service = _service()
    if not (approve_ids or reject_ids or decide_all):
        _echo_json(
            [
                {
                    "assignment_id": a["assignment_id"],
                    "task_id": a["task_id"],
                    "worker_id": a["worker_id"],
                    "label": a["label"],
                    "gold_label": a["gold_label"],
                    "gold_answer": a["gold_answer"],
                    "gold_ok": bool(a["gold_ok"]),
                }
                for a in service.pending_reviews()
            ]
        )
        return
    decisions: list[tuple[str, bool | None]] = []
    decisions += [(i, True) for i in approve_ids]
    decisions += [(i, False) for i in reject_ids]
    if decide_all:
        chosen = set(approve_ids) | set(reject_ids)
        decisions += [
            (a["assignment_id"], None) for a in service.pending_reviews() if a["assignment_id"] not in chosen
        ]
    for assignment_id, approve in decisions:
        note = feedback if approve is not None else None
        try:
            verdict = service.review(assignment_id, approve=approve, feedback=note)
        except BadRequest as exc:
            raise click.UsageError(exc.message) from exc
        except MatchError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc.message}") from exc
        click.echo(f"{assignment_id} {verdict}")


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
                return bytes(service.media.read(ref[len("media:") :]))
            from match.fetch import Fetcher

            cfg = service.config
            return Fetcher(
                timeout=float(cfg["MATCH_FETCH_TIMEOUT"]),
                max_bytes=int(cfg["MATCH_MAX_UPLOAD_BYTES"]),
                allow_networks=cfg["MATCH_FETCH_ALLOW_NETWORKS"],
            ).fetch(ref)
        except MatchError:
            return None

    return load


@crowd.command("report")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also write the HTML report here.")
@click.option(
    "--png", "png_path", type=click.Path(dir_okay=False), help="Also write a PNG contact sheet here."
)
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
@click.option(
    "--measure",
    is_flag=True,
    help="Fetch the images of pairs without a signature distance and "
    "measure it (else only pairs sent from /search, which carry one, are used).",
)
def calibrate(as_json: bool, measure: bool) -> None:
    """The signature-distance cutoff that best separates the crowd's same from different."""
    from match.crowd.report import build_report, calibration_points
    from match.crowd.report import calibrate as fit

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
        click.echo(
            f"not enough evidence: {result['same']} same and {result['different']} different "
            "completed pairs with a signature distance (need at least one of each)"
        )
        sys.exit(1)
    logistic = result["logistic"] or {}
    click.echo(
        f"{result['n']} pairs ({result['same']} same, {result['different']} different)\n"
        f"best cutoff: distance <= {result['cutoff']} is the same picture "
        f"({result['accuracy']:.1%} right, balanced {result['balanced_accuracy']:.1%})\n"
        f"logistic P(same | distance) = 0.5 at distance {logistic.get('cutoff')}\n"
        f"set MATCH_CUTOFF={result['cutoff']} to follow the crowd"
    )


def _read_pairs(path: str) -> list[tuple[str, str, str, str | None]]:
    """CSV rows ``name,url1,url2[,label]`` (a header row starting with ``name`` is skipped)."""
    import csv

    rows: list[tuple[str, str, str, str | None]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.reader(handle):
            if not record or record[0].strip().lower() == "name":
                continue
            if len(record) < 3:
                raise click.UsageError(f"{path}: each row needs name,url1,url2[,label]; got {record}")
            label = record[3].strip() if len(record) > 3 and record[3].strip() else None
            rows.append((record[0].strip(), record[1].strip(), record[2].strip(), label))
    return rows


@crowd.command("batch")
@click.argument("pairs_csv", type=click.Path(exists=True, dir_okay=False))
def batch(pairs_csv: str) -> None:
    """Create one task per CSV row (name,url1,url2[,label]): all of them or, over budget, none."""
    from match.crowd.service import _check_input

    service = _service()
    rows = _read_pairs(pairs_csv)
    for name, url1, url2, _label in rows:
        try:
            _check_input({"input": {"image1": {"url": url1}, "image2": {"url": url2}}})
        except BadRequest as exc:
            raise click.UsageError(f"{name}: {exc.message}") from exc
    fresh = [
        (n, a, b, None, None) for n, a, b, _l in rows if service.state.task("image-similarity", n) is None
    ]
    created = _run(lambda: service._create_tasks(fresh))
    click.echo(f"{len(created)} task(s) created, {len(rows) - len(fresh)} already there")


@crowd.command("truth")
@click.argument("pairs_csv", type=click.Path(exists=True, dir_okay=False))
def truth(pairs_csv: str) -> None:
    """Print a truth file for simulated workers (`match crowd server --simulate ...,truth=FILE`):
    the labels of PAIRS_CSV (name,url1,url2,label) and of the gold set, by form pair id."""
    from match.crowd import tasks as T

    service = _service()
    known = {T.pair_id("p", a, b): label for _n, a, b, label in _read_pairs(pairs_csv) if label}
    known.update({g["gold_id"]: g["label"] for g in service.state.gold()})
    _echo_json(known)


@crowd.command("simulate")
@click.option(
    "--simulate",
    "spec",
    default="workers=25,accuracy=0.7,spammers=0.2,latency=0",
    show_default=True,
    help="Simulated workers (see docs/crowd-server.md).",
)
@click.option(
    "--pairs", "n_pairs", default=200, show_default=True, help="How many labelled pairs to make up."
)
@click.option(
    "--pairs-csv",
    type=click.Path(exists=True, dir_okay=False),
    help="Your labelled pairs instead: name,url1,url2,label.",
)
@click.option("--gold", "n_gold", default=24, show_default=True, help="Gold pairs to make up.")
@click.option("--seed", default=11, show_default=True)
def simulate(spec: str, n_pairs: int, pairs_csv: str | None, n_gold: int, seed: int) -> None:
    """A dry run of the whole loop, offline: a crowd server on loopback with simulated
    workers, the tasks, syncs until done; prints accuracy, assignments, spammers, cost.

    Uses the current MATCH_CROWD_* settings (confidence, maximum, blocking...), but its own
    temporary data directories and endpoint.
    """
    import os
    import random
    import tempfile

    from werkzeug.serving import WSGIRequestHandler, make_server

    from match import config as match_config
    from match.crowd import tasks as T
    from match.crowd.server import create_crowd_app, crowd_store
    from match.crowd.service import CrowdService
    from match.crowd.workers import SimulatedCrowd, SimulationSettings

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    settings = SimulationSettings.parse(spec)
    rng = random.Random(seed)
    if pairs_csv:
        rows = [(n, a, b, label) for n, a, b, label in _read_pairs(pairs_csv) if label]
    else:
        rows = [
            (
                f"pair-{i}",
                f"http://images.invalid/q/{i}.jpg",
                f"http://images.invalid/m/{i}.jpg",
                rng.choice(T.LABELS),
            )
            for i in range(n_pairs)
        ]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "match-dry-run")  # the crowd server accepts any credentials
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with tempfile.TemporaryDirectory(prefix="match-crowd-dry-run-") as root:
        app = create_crowd_app(Path(root) / "server")
        store = crowd_store(app)
        httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        overrides = {
            "MATCH_DATA_DIR": str(Path(root) / "match"),
            "MATCH_CROWD_ENDPOINT": f"http://127.0.0.1:{httpd.server_port}/",
            "MATCH_CROWD_BUDGET": "100000.00",
        }
        service = CrowdService(match_config.load(overrides))
        truth = {T.pair_id("p", a, b): label for _n, a, b, label in rows}
        for i in range(n_gold):
            gid = service.add_gold(
                f"http://images.invalid/gold/{i}a.jpg",
                f"http://images.invalid/gold/{i}b.jpg",
                "edited" if i % 2 else "different",
            )
            truth[gid] = "edited" if i % 2 else "different"
        sim = SimulatedCrowd(store, settings, oracle=lambda key, _html: truth.get(key))
        started = time.time()
        _run(lambda: service._create_tasks([(n, a, b, None, None) for n, a, b, _l in rows]))
        for _ in range(500):
            sim.run_until_idle()
            if settings.latency:
                time.sleep(min(settings.latency, 1.0))
            service.sync()
            if not service.state.tasks(state="processing", limit=1) and not service.state.hits(
                states=["open", "expiring", "intent"]
            ):
                break
        right = answers = completed = 0
        for name, _a, _b, label in rows:
            row = service.state.task("image-similarity", name)
            assert row is not None
            answers += len(service.state.assignments(task_id=row["id"]))
            if row["state"] == "completed":
                completed += 1
                right += bool(row["result"]["match"]) == T.is_match(str(label))
        spammers = {w.worker_id for w in sim.workers if w.spammer}
        blocked = {w["worker_id"] for w in service.state.workers() if w["blocked"]}
        figures = {
            "pairs": len(rows),
            "completed": completed,
            "accuracy": round(right / max(1, completed), 4),
            "assignments_per_pair": round(answers / max(1, len(rows)), 2),
            "spammers": len(spammers),
            "spammers_blocked": len(spammers & blocked),
            "honest_blocked": len(blocked - spammers),
            "cost": T.dollars(service.state.spent()),
            "cost_per_pair": T.dollars(round(service.state.spent() / max(1, len(rows)))),
            "seconds": round(time.time() - started, 1),
        }
        _echo_json(figures)
        httpd.shutdown()
        httpd.server_close()
        service.close()
        store.close()
