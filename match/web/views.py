"""The web UI's pages: search, compare, browse (add, delete) and the crowd dashboard.

======================  =========  ==============================================
URL                     methods    page
======================  =========  ==============================================
/                       GET        redirects to /ui/
/ui/                    GET        search form; with ``q`` (a kept query) results
/ui/search              POST       search; the image is kept an hour under ``q``
/ui/compare             GET, POST  two images side by side with their score
/ui/browse              GET        the index, a page at a time; the add form
/ui/browse/add          POST       add uploaded images (CSRF)
/ui/browse/delete       GET, POST  confirm page, then the delete (CSRF)
/ui/thumbs/<sha>.jpg    GET        a thumbnail (match.web.thumbs)
/ui/crowd               GET        crowd dashboard: totals, workers, pairs, calibration
/ui/crowd/verify        POST       send a search's top matches to the crowd (CSRF)
/ui/crowd/sync          POST       one sync pass with the crowd endpoint (CSRF)
/ui/crowd/media/<key>   GET        an image kept for the crowd (dashboard only)
/ui/static/...          GET        match.css, match.js
======================  =========  ==============================================

Every page is a server-rendered form that works without JavaScript; ``match.js`` adds
drag and drop, paste and the live cutoff slider. Views call :mod:`match.service` (and
:mod:`match.crowd.api` / :mod:`match.crowd.report` for the crowd), as the JSON API and
the CLI do. The blueprint registers no error handler (STYLE.md, "Blueprints by
audience"): a view catches :class:`MatchError` and shows its message on the page with
the error's status.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers.response import Response as BaseResponse

from match import service
from match.app import get_fetcher, get_store
from match.errors import BadRequest, MatchError, MissingField
from match.web import csrf, evidence, queries, thumbs

__all__ = ["bp", "PAGE_SIZE"]

log = logging.getLogger(__name__)

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/ui/static",
               template_folder="templates")

#: Entries per page of /ui/browse and of the crowd dashboard's pairs.
PAGE_SIZE = 24
#: Most results a UI search asks for.
MAX_RESULTS = 50
#: Content-Security-Policy of every UI page: nothing from elsewhere but images
#: (a match's source URL is shown when there is no thumbnail).
CSP = ("default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# ===== plumbing ======================================================================


def _settings() -> Mapping[str, Any]:
    return current_app.config


def _sid() -> str:
    """This browser's CSRF session id (a new one is set as a cookie with the response)."""
    sid = csrf.session_id(request)
    if sid is None:
        sid = g.get("web_new_sid") or csrf.new_session_id()
        g.web_new_sid = sid
    return sid


#: Endpoints that change the index or spend crowd money: they need a read-write key.
WRITE_ENDPOINTS = frozenset({"web.add", "web.crowd_verify", "web.crowd_sync"})


@bp.before_request
def _require_key() -> Response | None:
    """With API keys configured (match.api.auth), the UI asks for one too.

    Browsers can't send ``Authorization: Bearer``, so the UI takes HTTP Basic auth with
    the API key as the password (any user name): the browser asks once and resends it.
    Reading pages needs an ``ro`` key; adding, deleting and sending work to the crowd
    need ``rw``. Without keys the UI is open, as the API is: put both behind your proxy's
    authentication when the server is reachable by others.
    """
    if request.endpoint == "web.static":
        return None
    keys = current_app.extensions.get("match.api_keys")
    if keys is None or not getattr(keys, "enabled", False):
        return None
    auth = request.authorization
    password = auth.password if auth is not None and auth.type == "basic" else None
    found = keys.lookup(password) if password else None
    if found is None:
        response = _message("A key is needed", "This server uses API keys. Sign in with any user name "
                            "and an API key as the password.", 401)
        response.headers["WWW-Authenticate"] = 'Basic realm="match", charset="UTF-8"'
        return response
    role, label = found
    g.api_key = label
    writing = request.endpoint in WRITE_ENDPOINTS or (request.endpoint == "web.delete"
                                                       and request.method == "POST")
    if writing and role != "rw":
        return _message("Read-only key", "Your API key is read-only (ro): adding, deleting and sending "
                        "work to the crowd need a read-write (rw) key.", 403)
    return None


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": lambda: csrf.token(_settings(), _sid()), "csrf_field": csrf.FIELD,
            "nav": request.endpoint or ""}


@bp.after_request
def _headers(response: Response) -> Response:
    sid = g.pop("web_new_sid", None)
    if sid:
        csrf.set_cookie(response, sid, secure=request.is_secure)
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(f"web/{template}", **context), status=status, mimetype="text/html")
    return response


def _message(title: str, text: str, status: int) -> Response:
    return _page("message.html", status, title=title, text=text)


def _csrf_failed() -> Response | None:
    """The refusal page when the form's CSRF token is missing or wrong, else None."""
    if csrf.valid(_settings(), request):
        return None
    return _message("The form has expired",
                    "This form was not sent from a page of this server, or your browser lost its "
                    "cookie. Go back, reload the page and try again.", 400)


def _files(name: str) -> list[FileStorage]:
    """Uploaded files of a field, ignoring the empty part a form sends when none is chosen."""
    return [f for f in request.files.getlist(name) if f and f.filename]


def _image(file_field: str, url_field: str) -> bytes:
    """The image of a form: an uploaded file, else the URL (fetched with the API's guards)."""
    files = _files(file_field)
    if files:
        data: bytes = files[0].read()
        if not data:
            raise BadRequest(f"the file chosen for {file_field} is empty")
        return data
    url = (request.form.get(url_field) or "").strip()
    if url:
        return get_fetcher().fetch(url, field=url_field)
    raise MissingField(file_field, f"choose an image file or paste an image URL ({url_field})")


def _too_large() -> str:
    limit = int(_settings()["MATCH_MAX_UPLOAD_BYTES"])
    return f"That upload is larger than the server accepts ({limit // (1 << 20)} MB, MATCH_MAX_UPLOAD_BYTES)."


def _http_url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


def _picture(filepath: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """How to show an indexed image: our thumbnail, else its source URL, else a placeholder."""
    sha = metadata.get(service.SHA256_KEY)
    source = _http_url(filepath) or _http_url(metadata.get("url"))
    if thumbs.exists(_settings(), sha):
        return {"src": url_for("web.thumb", sha=sha), "kind": "thumbnail", "source": source}
    if source:
        return {"src": source, "kind": "source", "source": source}
    return {"src": None, "kind": "none", "source": None}


def _shown_metadata(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Metadata as (key, text) pairs; the image digest last."""
    items = [(k, v) for k, v in metadata.items() if k != service.SHA256_KEY]
    if service.SHA256_KEY in metadata:
        items.append((service.SHA256_KEY, metadata[service.SHA256_KEY]))
    return [(str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in items]


def _crowd_state_exists() -> bool:
    return (Path(str(_settings()["MATCH_DATA_DIR"])) / "crowd.sqlite3").exists()


# ===== search ========================================================================


@dataclass
class SearchForm:
    """The search options, from a query string or a form."""

    cutoff: float
    all_orientations: bool
    limit: int
    errors: list[str]

    @classmethod
    def parse(cls, values: Mapping[str, str], *, checkbox_absent_means_off: bool) -> SearchForm:
        settings = _settings()
        errors: list[str] = []
        cutoff = float(settings["MATCH_CUTOFF"])
        raw = values.get("cutoff")
        if raw not in (None, ""):
            try:
                cutoff = service.check_cutoff(float(raw), settings)
            except (ValueError, MatchError):
                errors.append("The cutoff must be a number from 0 to 1.")
        limit = min(int(settings["MATCH_SEARCH_LIMIT"]), MAX_RESULTS)
        raw = values.get("limit")
        if raw not in (None, ""):
            try:
                limit = int(raw)
                if not 1 <= limit <= MAX_RESULTS:
                    raise ValueError
            except ValueError:
                errors.append(f"The number of results must be a whole number from 1 to {MAX_RESULTS}.")
                limit = min(int(settings["MATCH_SEARCH_LIMIT"]), MAX_RESULTS)
        # A form sends a hidden all=0 before the checkbox, so the last value wins.
        flags = values.getlist("all") if hasattr(values, "getlist") else [values.get("all")]
        flag = flags[-1] if flags else None
        if flag is None:
            all_orientations = not checkbox_absent_means_off
        else:
            all_orientations = flag.lower() in ("1", "on", "true", "yes")
        return cls(round(cutoff, 3), all_orientations, limit, errors)



def _hits(matches: list[Any]) -> list[dict[str, Any]]:
    confirmed = [m for m in matches if m.region is not None]
    sizes = evidence.stored_sizes(get_store(), [m.filepath for m in confirmed])
    previews = evidence.thumbnail_sizes(_settings(), {m.filepath: m.metadata.get(service.SHA256_KEY)
                                                      for m in confirmed})
    return [{"filepath": m.filepath, "score": m.score, "distance": m.distance,
             "metadata": _shown_metadata(m.metadata), "picture": _picture(m.filepath, m.metadata),
             **evidence.describe(m, sizes.get(m.filepath), previews.get(m.filepath))}
            for m in matches]


@bp.route("/", methods=["GET"])
def root() -> BaseResponse:
    """People who open the server's address get the UI."""
    return redirect(url_for("web.search"))


#: What the page says when a kept query image is gone.
EXPIRED = ("This search has expired: the server keeps a query image for an hour (each server its "
           "own). Choose the image again.")


@bp.route("/ui/", methods=["GET"])
def search() -> Response:
    """The search page; with ``q`` (a kept query image) it shows the results."""
    form = SearchForm.parse(request.args, checkbox_absent_means_off=False)
    key = request.args.get("q")
    if not key:
        return _page("search.html", form=form, key=None, hits=None, query_src=None, errors=list(form.errors),
                     verdicts={}, notice=None)
    data = queries.load(_settings(), key)
    if data is None:
        return _page("search.html", 404, form=form, key=None, hits=None, query_src=None,
                     errors=[*form.errors, EXPIRED], verdicts={}, notice=None)
    return _results(form, key, data)


def _results(form: SearchForm, key: str, data: bytes, notice: dict[str, int] | None = None) -> Response:
    """The search page with the results of the kept query image ``key`` (bytes ``data``)."""
    # The query's preview is decoded only once the search (and so its size, pixel and
    # format checks) has passed: thumbs.make has none of those limits.
    context: dict[str, Any] = {"form": form, "key": key, "hits": None, "query_src": None,
                               "errors": list(form.errors), "verdicts": {}, "notice": notice}
    if form.errors:
        return _page("search.html", 400, **context)
    try:
        matches = service.search(get_store(), _settings(), data, all_orientations=form.all_orientations,
                                 limit=form.limit, cutoff=form.cutoff)
    except MatchError as error:
        context["errors"].append(_explain(error))
        return _page("search.html", error.status, **context)
    context["hits"] = _hits(matches)
    context["query_src"] = thumbs.data_uri(data)
    context["verdicts"] = _verdicts(data, [m.filepath for m in matches])
    return _page("search.html", **context)


def _verdicts(data: bytes, filepaths: list[str]) -> dict[str, dict[str, Any]]:
    """Crowd verdicts for the results, when the crowd has been used on this data dir."""
    if not filepaths or not _crowd_state_exists():
        return {}
    try:
        from match.crowd.api import search_verdicts

        return search_verdicts(data, filepaths)
    except Exception as exc:  # the search page must work whatever the crowd's state
        log.warning("no crowd verdicts for the results page: %s", exc)
        return {}


def _explain(error: MatchError) -> str:
    """A MatchError's message for a person (the first letter up, a full stop)."""
    text = error.message.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


@bp.route("/ui/search", methods=["POST"])
def search_post() -> Response:
    """Search with the posted image and show the results.

    The image is kept for an hour under a key (the page's hidden ``q``), so the slider,
    "search again" and "send to the crowd" need no second upload. The results are
    rendered here rather than behind a redirect: with several replicas and no shared
    ``MATCH_DATA_DIR``, the GET after a redirect could reach a server that does not
    have the image. Reloading re-posts the form, which works on any server.
    """
    form = SearchForm.parse({}, checkbox_absent_means_off=False)
    try:
        form = SearchForm.parse(request.form, checkbox_absent_means_off=True)
        kept = request.form.get("q") or ""
        if kept and not _files("image") and not (request.form.get("url") or "").strip():
            # The results page's form with no new image: the same image, new options.
            data = queries.load(_settings(), kept)
            if data is None:
                return _page("search.html", 404, form=form, key=None, hits=None, query_src=None,
                             errors=[EXPIRED], verdicts={}, notice=None)
            return _results(form, kept, data)
        data = _image("image", "url")
    except RequestEntityTooLarge:
        return _page("search.html", 413, form=form, key=None, hits=None, query_src=None,
                     errors=[_too_large()], verdicts={}, notice=None)
    except MatchError as error:
        return _page("search.html", error.status, form=form, key=None, hits=None, query_src=None,
                     errors=[_explain(error)], verdicts={}, notice=None)
    return _results(form, queries.keep(_settings(), data), data)


# ===== compare =======================================================================


@bp.route("/ui/compare", methods=["GET", "POST"])
def compare() -> Response:
    """Two images side by side and their score."""
    context: dict[str, Any] = {"result": None, "errors": [], "cutoff": float(_settings()["MATCH_CUTOFF"])}
    if request.method == "GET":
        return _page("compare.html", **context)
    try:
        first = _image("image1", "url1")
        second = _image("image2", "url2")
        comparison = service.compare(_settings(), first, second)
    except RequestEntityTooLarge:
        context["errors"].append(_too_large())
        return _page("compare.html", 413, **context)
    except MatchError as error:
        context["errors"].append(_explain(error))
        return _page("compare.html", error.status, **context)
    context["result"] = {"score": comparison.score, "distance": comparison.distance,
                         "first": thumbs.data_uri(first), "second": thumbs.data_uri(second),
                         **evidence.of_comparison(comparison, second, _settings())}
    return _page("compare.html", **context)


# ===== browse, add, delete ===========================================================


def _page_number(raw: str | None) -> int:
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1


@bp.route("/ui/browse", methods=["GET"])
def browse() -> Response:
    """The index, :data:`PAGE_SIZE` entries a page, with the add form."""
    return _browse(_page_number(request.args.get("page")), [], 200)


def _browse(page: int, errors: list[str], status: int) -> Response:
    store, settings = get_store(), _settings()
    try:
        total = service.count(store)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(page, pages)
        filepaths = service.list_filepaths(store, settings, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        records = [store.get(path) for path in filepaths]
    except MatchError as error:
        return _page("browse.html", error.status, entries=[], total=0, page=1, pages=1,
                     errors=[*errors, _explain(error)], added=None, deleted=None)
    entries = [{"filepath": r.filepath, "metadata": _shown_metadata(r.metadata),
                "picture": _picture(r.filepath, r.metadata)} for r in records if r is not None]
    added = request.args.get("added") or ""
    shown = int(added) if added.isascii() and added.isdigit() and len(added) < 10 else None
    return _page("browse.html", status, entries=entries, total=total, page=page, pages=pages,
                 errors=errors, added=shown,
                 deleted=request.args.get("deleted"), first=(page - 1) * PAGE_SIZE + 1)


def _upload_name(upload: FileStorage) -> str:
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or "upload"


@bp.route("/ui/browse/add", methods=["POST"])
def add() -> Response | BaseResponse:
    """Add the uploaded images (or one image URL) to the index."""
    try:
        refused = _csrf_failed()
        if refused is not None:
            return refused
        uploads = _files("image")
    except RequestEntityTooLarge:
        return _browse(1, [_too_large()], 413)
    settings, store = _settings(), get_store()
    filepath = (request.form.get("filepath") or "").strip()
    url = (request.form.get("url") or "").strip()
    errors: list[str] = []
    try:
        metadata = service.parse_metadata(request.form.get("metadata") or None,
                                          max_bytes=service.metadata_limit(settings))
    except MatchError as error:
        return _browse(1, [_explain(error)], error.status)
    jobs: list[tuple[str, Any]] = []
    if uploads:
        for upload in uploads:
            if len(uploads) == 1 and filepath:
                name = filepath
            else:
                name = filepath.rstrip("/") + "/" + _upload_name(upload) if filepath else _upload_name(upload)
            jobs.append((name, upload))
    elif url:
        meta_url = {"url": url, **metadata}
        jobs.append((filepath or url, url))
        metadata = meta_url
    else:
        return _browse(1, ["Choose one or more image files (or give an image URL) to add."], 400)
    added = 0
    for name, source in jobs:
        try:
            data = source.read() if isinstance(source, FileStorage) else get_fetcher().fetch(source)
            service.add(store, settings, filepath=name, data=data, metadata=metadata)
            added += 1
        except MatchError as error:
            errors.append(f"{name}: {_explain(error)}")
    if errors:
        return _browse(1, errors, 400 if not added else 200)
    target = _position(jobs[0][0]) if len(jobs) == 1 else 1
    return redirect(url_for("web.browse", page=target, added=added), code=303)


def _position(filepath: str) -> int:
    """The browse page that shows ``filepath`` (list order is ascending filepath)."""
    store = get_store()
    try:
        low, high = 0, service.count(store)
        # Binary search over the sorted listing, one filepath per probe (log2(n) probes).
        while low < high:
            middle = (low + high) // 2
            at = store.list(middle, 1)
            if at and at[0] < filepath:
                low = middle + 1
            else:
                high = middle
    except (MatchError, ValueError):  # e.g. an offset past what the backend pages to
        return 1
    return low // PAGE_SIZE + 1


@bp.route("/ui/browse/delete", methods=["GET", "POST"])
def delete() -> Response | BaseResponse:
    """GET: the confirm page. POST (with the CSRF token): delete, back to the listing."""
    source = request.args if request.method == "GET" else request.form
    filepath = source.get("filepath") or ""
    page = _page_number(source.get("page"))
    store, settings = get_store(), _settings()
    if request.method == "GET":
        try:
            record = store.get(service.check_filepath(filepath)) if filepath else None
        except MatchError as error:
            return _message("Not in the index", _explain(error), error.status)
        if record is None:
            return _message("Not in the index", f"No image is stored under {filepath!r}.", 404)
        return _page("confirm_delete.html", filepath=filepath, page=page,
                     pic=_picture(record.filepath, record.metadata),
                     items=_shown_metadata(record.metadata))
    refused = _csrf_failed()
    if refused is not None:
        return refused
    try:
        service.delete(store, filepath, settings)
    except MatchError as error:
        return _message("Could not delete", _explain(error), error.status)
    return redirect(url_for("web.browse", page=page, deleted=filepath), code=303)


@bp.route("/ui/thumbs/<sha>.jpg", methods=["GET"])
def thumb(sha: str) -> Response:
    """A thumbnail; content-addressed, so browsers may keep it."""
    if not thumbs.exists(_settings(), sha):
        return Response("no thumbnail", status=404, mimetype="text/plain")
    response = send_file(thumbs.path(_settings(), sha), mimetype="image/jpeg", max_age=86400 * 30)
    response.headers["Cache-Control"] = "public, max-age=2592000, immutable"
    return response


# ===== crowd =========================================================================


@bp.route("/ui/crowd/verify", methods=["POST"])
def crowd_verify() -> Response:
    """Send the top matches of a kept search to the crowd; the results again, with a notice."""
    refused = _csrf_failed()
    if refused is not None:
        return refused
    form = SearchForm.parse(request.form, checkbox_absent_means_off=False)
    key = request.form.get("q") or ""
    data = queries.load(_settings(), key)
    if data is None:
        return _message("This search has expired", EXPIRED, 404)
    if form.errors:  # nothing is sent (and paid for) on settings the person didn't ask for
        return _results(form, key, data)
    try:
        top = int(request.form.get("top") or 3)
        from match.crowd.api import verify_search

        matches = service.search(get_store(), _settings(), data, all_orientations=form.all_orientations,
                                 limit=form.limit, cutoff=form.cutoff)
        if not matches:
            raise BadRequest("there are no matches to verify")
        entries = verify_search(data, matches, top)
    except ValueError:
        return _message("Could not send to the crowd", "How many matches to send must be a number.", 400)
    except MatchError as error:
        return _message("Could not send to the crowd", _explain(error), error.status)
    sent = sum(1 for entry in entries if "taskName" in entry)
    # The results again, with the verdicts' state and a notice (rendered here, not behind a
    # redirect, for the reason given in search_post).
    return _results(form, key, data, notice={"sent": sent, "skipped": len(entries) - sent})


@bp.route("/ui/crowd/sync", methods=["POST"])
def crowd_sync() -> Response | BaseResponse:
    """One sync pass with the crowd endpoint (collect answers, finish tasks)."""
    refused = _csrf_failed()
    if refused is not None:
        return refused
    try:
        from match.crowd.api import get_crowd

        summary = get_crowd().sync()
    except MatchError as error:
        return _message("Could not sync with the crowd", _explain(error), error.status)
    counts = summary.as_dict()
    query = {k: str(counts.get(k, 0)) for k in ("collected", "completed", "failed")}
    return redirect(url_for("web.crowd") + "?" + urlencode({"synced": "1", **query}), code=303)


@bp.route("/ui/crowd/media/<key>", methods=["GET"])
def crowd_media(key: str) -> Response | BaseResponse:
    """An image the crowd keeps (the query side of a pair), for the dashboard."""
    from match.crowd.api import get_crowd

    media = get_crowd().media
    if media.backend != "local":
        return redirect(media.url(key, ttl=600))
    try:
        data = media.read(key)
    except MatchError:
        return Response("no such image", status=404, mimetype="text/plain")
    from match.crowd.media import sniff_type

    response = Response(data, mimetype=sniff_type(data))
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.route("/ui/crowd", methods=["GET"])
def crowd() -> Response:
    """The crowd dashboard: totals and cost, per-worker gold accuracy, the pairs, calibration."""
    try:
        from match.crowd.api import get_crowd
        from match.crowd.report import build_report, calibrate, calibration_points

        crowd_service = get_crowd()
        report = build_report(crowd_service)
        points = calibration_points(report)
        calibration = calibrate(points)
        budget = crowd_service.settings.budget_cents
    except MatchError as error:
        return _message("The crowd is not available", _explain(error), error.status)
    pairs = list(reversed(report["pairs"]))  # newest first
    pages = max(1, math.ceil(len(pairs) / PAGE_SIZE))
    page = min(_page_number(request.args.get("page")), pages)
    shown = pairs[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    for pair in shown:
        pair["src1"], pair["src2"] = _media_src(pair["image1"]), _media_src(pair["image2"])
    synced = None
    if request.args.get("synced"):
        synced = {k: request.args.get(k, "0") for k in ("collected", "completed", "failed")}
    workers = sorted(report["workers"], key=lambda w: (w["accuracy"] is None, -(w["accuracy"] or 0),
                                                       w["worker_id"]))
    return _page("crowd.html", totals=report["totals"], workers=workers, pairs=shown, page=page, pages=pages,
                 pair_count=len(pairs), calibration=calibration,
                 plot=calibration_plot(points, calibration, float(_settings()["MATCH_CUTOFF"])),
                 budget_cents=budget, synced=synced, money=_money)


def _media_src(ref: str) -> str | None:
    if ref.startswith("media:"):
        return url_for("web.crowd_media", key=ref[len("media:"):])
    return _http_url(ref)


def _money(cents: float | None) -> str:
    return "–" if cents is None else f"${cents / 100:,.2f}"


def calibration_plot(points: list[tuple[float, bool]], calibration: Mapping[str, Any],
                     current_cutoff: float) -> dict[str, Any]:
    """Geometry of the calibration plot (an inline SVG in crowd.html).

    x: signature distance 0..1; y: the crowd's verdict, "same" at the top, "different"
    at the bottom (points spread a little so they don't hide each other); the logistic
    fit P(same | distance) as a curve; the best cutoff and the current MATCH_CUTOFF as
    vertical lines.
    """
    width, height, left, right, top, bottom = 640, 300, 56, 16, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(d: float) -> float:
        return round(left + max(0.0, min(1.0, d)) * plot_w, 1)

    def y(p: float) -> float:
        return round(top + (1 - p) * plot_h, 1)

    dots = []
    for index, (distance, same) in enumerate(points):
        spread = ((index * 37) % 11 - 5) / 100  # deterministic, within +-0.05
        dots.append({"x": x(distance), "y": y((0.92 if same else 0.08) + spread), "same": same,
                     "distance": distance})
    curve = None
    logistic = calibration.get("logistic")
    if logistic:
        coords = []
        for step in range(101):
            d = step / 100
            z = logistic["intercept"] + logistic["slope"] * d
            p = 1 / (1 + math.exp(-max(-60.0, min(60.0, z))))
            coords.append(f"{x(d)},{y(p)}")
        curve = "M" + " L".join(coords)
    best = calibration.get("cutoff")
    return {"width": width, "height": height, "left": left, "top": top, "plot_w": plot_w, "plot_h": plot_h,
            "bottom_y": top + plot_h, "dots": dots, "curve": curve,
            "best_x": x(best) if best is not None else None, "current_x": x(current_cutoff),
            "ticks": [{"x": x(t / 10), "label": f"{t / 10:.1f}"} for t in range(11)],
            "y_same": y(0.92), "y_diff": y(0.08), "y_half": y(0.5)}
