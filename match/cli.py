"""The ``match`` command line: serve the API, and run its operations from a shell.

Every command builds the app with :func:`match.app.create_app` (so it reads the same
settings: ``MATCH_CONFIG``, ``MATCH_*`` env) and calls :mod:`match.service`, the code
behind the HTTP endpoints. ::

    match serve [--host H] [--port P] [--workers N] [--timeout S]
    match add PATH|DIR... [--metadata JSON] [--jobs N] [--batch-size N]
    match search IMAGE [--limit N] [--cutoff D] [--no-all-orientations]
    match compare IMAGE1 IMAGE2
    match count
    match list [--offset N] [--limit N]
    match delete FILEPATH
    match crowd ...            (when match.crowd.cli is installed)

IMAGE may be a file or an http(s) URL (fetched with the server's guards).

Exit codes (in the spirit of threatexchange's CLI, user mistakes and unreachable
dependencies differ):

* 0 — success;
* 1 — the operation failed on its input (an image that does not decode, an unknown
  filepath, ``add`` that added nothing);
* 2 — usage or configuration error (click's own code for bad options);
* 3 — the store is unavailable (Elasticsearch down): retry later.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from flask import Flask

from match import __version__, service
from match.errors import MatchError, StoreUnavailable
from match.store import Record, SignatureStore

__all__ = ["cli", "main", "EXIT_FAILED", "EXIT_USAGE", "EXIT_STORE_UNAVAILABLE", "IMAGE_SUFFIXES"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE_UNAVAILABLE = 3

#: Files ``match add DIR`` picks up when walking a directory (files named on the
#: command line are always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})

T = TypeVar("T")


class CommandError(click.ClickException):
    """A failure with its own exit code; click prints ``Error: <message>`` to stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _MatchGroup(click.Group):
    """The main group; ``crowd`` is loaded from match.crowd.cli on demand (it pulls boto3)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        if "crowd" not in names and _crowd_available():
            names = sorted([*names, "crowd"])
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name == "crowd" and _crowd_available():
            module = importlib.import_module("match.crowd.cli")
            command = getattr(module, "crowd", None)
            if not isinstance(command, click.Command):
                raise CommandError("match.crowd.cli does not define a click group named crowd")
        return command


def _crowd_available() -> bool:
    """True when the crowd engineers' ``match/crowd/cli.py`` exists (it defines ``crowd``)."""
    try:
        return importlib.util.find_spec("match.crowd.cli") is not None
    except (ImportError, ValueError):
        return False


@click.group(cls=_MatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="match")
def cli() -> None:
    """match: a reverse image search server.

    Settings come from MATCH_* environment variables or the file named by MATCH_CONFIG
    (see README.md, "Settings"). Exit codes: 1 failed, 2 usage or configuration
    error, 3 store unavailable.
    """


def main() -> None:
    """Console entry point (``match``, ``python -m match``)."""
    cli(prog_name="match")


# --- plumbing ------------------------------------------------------------------------


def _app(**overrides: Any) -> Flask:
    """The app, as ``match serve`` would build it; bad settings exit 2."""
    from match.app import create_app

    try:
        return create_app(overrides or None)
    except ValueError as exc:
        raise CommandError(f"configuration: {exc}", EXIT_USAGE) from exc


def _run(action: Callable[[], T]) -> T:
    """Run ``action``, turning match's errors into exit codes."""
    try:
        return action()
    except StoreUnavailable as exc:
        raise CommandError(f"store unavailable: {exc.message}", EXIT_STORE_UNAVAILABLE) from exc
    except MatchError as exc:
        raise CommandError(exc.message, EXIT_FAILED) from exc


def _store(app: Flask) -> SignatureStore:
    from match.app import get_store

    return _run(lambda: get_store(app))


def _close(app: Flask) -> None:
    from match.app import close_store

    close_store(app)


def _read_image(app: Flask, source: str) -> bytes:
    """Bytes of a file, or of an http(s) URL fetched with the server's guards."""
    if source.startswith(("http://", "https://")):
        from match.app import get_fetcher

        return _run(lambda: get_fetcher(app).fetch(source, field="image"))
    path = Path(source)
    limit = int(app.config["MATCH_MAX_UPLOAD_BYTES"])
    try:
        if path.stat().st_size > limit:
            raise CommandError(f"{source}: larger than MATCH_MAX_UPLOAD_BYTES ({limit} bytes)")
        return path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{source}: {exc.strerror or exc}") from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


# --- serve ---------------------------------------------------------------------------


def _default_workers() -> int:
    return 2 * (os.cpu_count() or 1)


@cli.command()
@click.option("--host", default=None, help="Address to bind [MATCH_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to bind [MATCH_PORT, default 8000].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="gunicorn worker processes [MATCH_WORKERS; default 2 x CPU cores].")
@click.option("--timeout", type=click.IntRange(1), default=None,
              help="Seconds before a silent worker is restarted [MATCH_TIMEOUT, default 60].")
def serve(host: str | None, port: int | None, workers: int | None, timeout: int | None) -> None:
    """Serve the HTTP API with gunicorn (access log on stdout, errors on stderr).

    SIGTERM shuts down gracefully (workers finish the requests they have, for up to
    30 s); Ctrl-C (SIGINT) stops at once.
    """
    # Metrics of all workers in one place: prometheus_client's multiprocess mode reads
    # this variable when it is first imported, which happens in _app() just below.
    metrics_dir = _metrics_dir()
    app = _app()
    settings = app.config
    bind_host = host or str(settings["MATCH_HOST"])
    if ":" in bind_host:  # an IPv6 address
        bind_host = f"[{bind_host.strip('[]')}]"
    options = {
        "bind": f"{bind_host}:{port or settings['MATCH_PORT']}",
        "workers": workers or int(settings["MATCH_WORKERS"]) or _default_workers(),
        "timeout": timeout or int(settings["MATCH_TIMEOUT"]),
        "loglevel": str(settings["MATCH_LOG_LEVEL"]),
    }
    logging.basicConfig(level=str(settings["MATCH_LOG_LEVEL"]).upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    # The access log: match's JSON lines (match.api.observe) on stdout, bare.
    access = logging.getLogger("match.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    master = os.getpid()
    try:
        _gunicorn(app, options).run()
    finally:
        # Workers leave through SystemExit too, up this same (forked) stack: only the
        # master, once every worker is gone, removes the directory.
        if metrics_dir is not None and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir() -> str | None:
    """Set PROMETHEUS_MULTIPROC_DIR to a fresh temporary directory (returned, to remove
    at exit), unless the operator chose one (kept as is; returns None)."""
    # Not match.metrics.MULTIPROC_ENV: importing match.metrics would import
    # prometheus_client before the variable is set, and fix it in per-process mode.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="match-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _gunicorn(app: Flask, options: dict[str, Any]) -> Any:
    """A gunicorn application serving ``app`` (gunicorn's documented custom-app recipe).

    The app is built once in the master; workers fork from it and each opens its own
    store on first use (match.app.get_store), closing it when the worker exits.
    """
    from gunicorn.app.base import BaseApplication

    from match.app import close_store

    def worker_exit(server: Any, worker: Any) -> None:
        close_store(app)

    def child_exit(server: Any, worker: Any) -> None:
        # In the master, for any worker that ended (even SIGKILLed): its metrics files
        # are marked dead (prometheus_client multiprocess mode).
        from match.metrics import mark_process_dead

        mark_process_dead(worker.pid)

    settings = {
        # gunicorn's sync worker, answering unparsable requests with the JSON envelope.
        "worker_class": "match.worker.Worker",
        # The longest request line gunicorn allows: a 1024-character filepath in a query.
        "limit_request_line": 8190,
        # match writes its own JSON access lines (match.api.observe), not gunicorn's.
        "accesslog": None,
        "errorlog": "-",
        "graceful_timeout": 30,
        "proc_name": "match",
        "worker_exit": worker_exit,
        "child_exit": child_exit,
        **options,
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    return Server()


# --- add -----------------------------------------------------------------------------


@dataclass
class _AddSummary:
    """What ``match add`` did: counts, and why each skipped file was skipped."""

    added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _walk(sources: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, filepath) pairs: files as given; directories recursively, images only.

    The filepath is the path as found from the argument: ``match add photos`` stores
    ``photos/2024/a.jpg`` for the file ``photos/2024/a.jpg`` (POSIX separators).
    """
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        found = Path(root) / name
                        yield found, found.as_posix()
        else:
            yield path, path.as_posix()


def _sign_file(path: str, settings: dict[str, Any]) -> service.SignedImage | str:
    """Worker: the signature of one file, or why it can't be signed (a message)."""
    try:
        return service.sign_file(path, settings)
    except MatchError as exc:
        return exc.message
    except OSError as exc:
        return exc.strerror or str(exc)


def _pool(jobs: int) -> ProcessPoolExecutor:
    """Signing processes. fork is cheap, and safe while we are single-threaded (the
    workers only sign; they never touch the store); otherwise forkserver or spawn."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context)


def _signed(files: list[tuple[Path, str]], settings: dict[str, Any],
            jobs: int) -> Iterator[service.SignedImage | str]:
    """Sign ``files`` in order, in ``jobs`` processes (in this one when jobs is 1)."""
    if not files:
        return
    if jobs == 1 or len(files) == 1:
        for path, _ in files:
            yield _sign_file(str(path), settings)
        return
    with _pool(min(jobs, len(files))) as pool:
        futures: list[Future[service.SignedImage | str]] = [
            pool.submit(_sign_file, str(path), settings) for path, _ in files]
        for future in futures:
            yield future.result()


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--metadata", default=None,
              help='JSON object stored with every image, e.g. \'{"source": "scan"}\'.')
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Processes signing in parallel [default: CPU cores].")
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True,
              help="Records per bulk upsert.")
def add(paths: Sequence[str], metadata: str | None, jobs: int | None, batch_size: int) -> None:
    """Add image files, and directories recursively (files with image suffixes).

    Each image is stored under its path as found from the argument (e.g. photos/a/b.jpg),
    replacing any record with that filepath. Files that can't be signed are skipped
    and listed at the end; the exit code is 1 when nothing was added.
    """
    app = _app()
    settings = dict(app.config)
    meta = _run(lambda: service.parse_metadata(metadata, field="--metadata",
                                               max_bytes=service.metadata_limit(settings)))
    files = list(_walk(paths))
    if not files:
        raise CommandError("no image files found in " + ", ".join(paths))
    store = _store(app)
    summary = _AddSummary()
    try:
        _run(lambda: _add_files(store, settings, files, meta, jobs or os.cpu_count() or 1,
                                batch_size, summary))
    finally:
        _close(app)
    _report(summary)
    if summary.added == 0:
        raise CommandError("nothing was added")


def _add_files(store: SignatureStore, settings: dict[str, Any], files: list[tuple[Path, str]],
               metadata: dict[str, Any], jobs: int, batch_size: int, summary: _AddSummary) -> None:
    """Sign ``files`` in a process pool and upsert them in batches as they come."""
    batch: list[Record] = []

    def flush() -> None:
        summary.added += store.upsert_many(batch)
        if settings.get("MATCH_THUMBNAILS"):  # made by the signing processes; claimed once stored
            from match.web import thumbs

            for record in batch:
                thumbs.claim(settings, record.sha256, record.filepath)
        batch.clear()

    with click.progressbar(length=len(files), label="signing", file=sys.stderr) as bar:
        for (path, filepath), outcome in zip(files, _signed(files, settings, jobs), strict=True):
            bar.update(1)
            if isinstance(outcome, str):
                summary.skipped.append((str(path), outcome))
                continue
            try:
                service.check_filepath(filepath)
            except MatchError as exc:
                summary.skipped.append((str(path), exc.message))
                continue
            batch.append(service.make_record(filepath, outcome, metadata))
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--all", "redo", is_flag=True, help="Recompute local features of records that have them too.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="Processes extracting in parallel [default: CPU cores].")
@click.option("--batch-size", type=click.IntRange(1), default=500, show_default=True,
              help="Records per bulk upsert.")
def reindex(paths: Sequence[str], redo: bool, jobs: int | None, batch_size: int) -> None:
    """Backfill local features of stored images from their files (PATHS as given to `match add`).

    For an index made before local features (or with MATCH_LOCAL_FEATURES off): each
    file whose filepath is stored without features gets them; its signature,
    metadata and date are kept. Files not in the index, or whose bytes changed since
    they were added, are skipped and listed (add those with `match add`). Searches keep
    working meanwhile: records without features are judged by signature alone.
    """
    app = _app()
    settings = dict(app.config)
    if not service.local_features_on(settings):
        raise CommandError("MATCH_LOCAL_FEATURES is off: there is nothing to reindex")
    files = list(_walk(paths))
    if not files:
        raise CommandError("no image files found in " + ", ".join(paths))
    store = _store(app)
    summary = _AddSummary()
    try:
        _run(lambda: _reindex_files(store, settings, files, redo, jobs or os.cpu_count() or 1,
                                    batch_size, summary))
        missing = _run(store.missing_features)
    finally:
        _close(app)
    err = sys.stderr
    click.echo(f"reindexed {summary.added}, skipped {len(summary.skipped)}; "
               f"{missing} stored images still have no local features", file=err)
    for path, reason in summary.skipped:
        click.echo(f"  skipped {path}: {reason}", file=err)


def _reindex_files(store: SignatureStore, settings: dict[str, Any], files: list[tuple[Path, str]],
                   redo: bool, jobs: int, batch_size: int, summary: _AddSummary) -> None:
    """Give the stored records of ``files`` their local features, in batches."""
    todo: list[tuple[Path, str, Record]] = []
    for path, filepath in files:
        record = store.get(filepath) if _valid_filepath(filepath) else None
        if record is None:
            summary.skipped.append((str(path), "not in the index (add it with `match add`)"))
        elif record.features is None or redo:
            todo.append((path, filepath, record))
    batch: list[Record] = []

    def flush() -> None:
        summary.added += store.upsert_many(batch)
        batch.clear()

    pending = [(path, filepath) for path, filepath, _ in todo]
    with click.progressbar(length=len(todo), label="extracting", file=sys.stderr) as bar:
        for (path, _, record), outcome in zip(todo, _signed(pending, settings, jobs), strict=True):
            bar.update(1)
            if isinstance(outcome, str):
                summary.skipped.append((str(path), outcome))
                continue
            stored_sha = record.sha256 or record.metadata.get(service.SHA256_KEY)
            if stored_sha and stored_sha != outcome.sha256:
                summary.skipped.append((str(path), "the file changed since it was added "
                                        "(add it again with `match add`)"))
                continue
            batch.append(dataclasses.replace(record, features=outcome.features))
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()


def _valid_filepath(filepath: str) -> bool:
    try:
        service.check_filepath(filepath)
    except MatchError:
        return False
    return True


def _report(summary: _AddSummary) -> None:
    err = sys.stderr
    click.echo(f"added {summary.added}, skipped {len(summary.skipped)}", file=err)
    for path, reason in summary.skipped:
        click.echo(f"  skipped {path}: {reason}", file=err)


# --- one-image commands ----------------------------------------------------------------


@cli.command()
@click.argument("image")
@click.option("--limit", type=click.IntRange(1), default=None, help="Most results [MATCH_SEARCH_LIMIT].")
@click.option("--cutoff", type=click.FloatRange(0, 1), default=None,
              help="Largest distance reported [MATCH_CUTOFF].")
@click.option("--all-orientations/--no-all-orientations", default=True, show_default=True,
              help="Also search the image rotated and mirrored.")
def search(image: str, limit: int | None, cutoff: float | None, all_orientations: bool) -> None:
    """Print the stored images like IMAGE (a file or URL) as JSON, best first."""
    app = _app()
    data = _read_image(app, image)
    store = _store(app)
    try:
        matches = _run(lambda: service.search(store, app.config, data, all_orientations=all_orientations,
                                              limit=limit, cutoff=cutoff))
    finally:
        _close(app)
    _echo_json([service.hit_json(m) for m in matches])


@cli.command()
@click.argument("image1")
@click.argument("image2")
def compare(image1: str, image2: str) -> None:
    """Print the score and distance between two images (files or URLs) as JSON."""
    app = _app()
    first, second = _read_image(app, image1), _read_image(app, image2)
    comparison = _run(lambda: service.compare(app.config, first, second))
    _echo_json(service.comparison_json(comparison))


@cli.command()
def count() -> None:
    """Print the number of stored images."""
    app = _app()
    store = _store(app)
    try:
        click.echo(_run(lambda: service.count(store)))
    finally:
        _close(app)


@cli.command(name="list")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
def list_(offset: int, limit: int) -> None:
    """Print stored filepaths in ascending order, one per line."""
    app = _app()
    store = _store(app)
    try:
        filepaths = _run(lambda: service.list_filepaths(store, app.config, offset=offset, limit=limit))
    finally:
        _close(app)
    for filepath in filepaths:
        click.echo(filepath)


@cli.command()
@click.argument("filepath")
def delete(filepath: str) -> None:
    """Remove the image stored under FILEPATH (exit 1 if there is none)."""
    app = _app()
    store = _store(app)
    try:
        _run(lambda: service.delete(store, filepath, app.config))
    finally:
        _close(app)
    click.echo(f"deleted {filepath}", err=True)

