"""match's own crowd server: the part of MTurk's requester API match uses, plus its workers.

MTurk closed in 2026. Rather than a second code path, match runs this server and
points the same boto3 client at it::

    boto3.client("mturk", endpoint_url="http://127.0.0.1:8001/", region_name="us-east-1")

so the requester side (:mod:`match.crowd.mturk`) works unchanged against MTurk
production, the sandbox, or here. The server has three faces:

* **The requester API**, ``POST /``: the AWS JSON 1.1 protocol MTurk speaks (an
  ``X-Amz-Target: MTurkRequesterServiceV20170117.<Operation>`` header, a JSON body,
  a JSON answer; errors as HTTP 400 ``{"__type": "RequestError", "Message": ...,
  "TurkErrorCode": ...}`` so botocore raises ``client.exceptions.RequestError``). Any
  signature is accepted; the access key id in the ``Authorization`` header names the
  requester, whose HITs, funds, qualification types and blocks are its own. The
  operations and MTurk's rules live in :mod:`match.crowd.server_store`.
* **The worker pages**, ``/worker``: a person signs in with a worker token, sees the
  HITs they may accept, accepts one, does it in a sandboxed frame that shows the HIT's
  HTMLQuestion with its form rewritten to post to this server's
  ``/mturk/externalSubmit`` (as MTurk's own externalSubmit, the posted fields become
  the ``QuestionFormAnswers``), and sees their assignments, notifications and bonuses.
  Plain server-rendered HTML, no CDN, usable on a phone.
* **An admin API**, guarded by a bearer token: ``POST /admin/workers`` makes a
  worker (its token is shown once, only a hash is stored) and ``POST /admin/balance``
  sets a requester's balance.

Simulated workers (:mod:`match.crowd.workers`) can run beside it for dry runs.
:func:`create_crowd_app` builds the Flask app and :func:`serve` runs it, which is what
``match crowd server --port 8001 --data-dir DIR [--simulate ...]`` calls. Worker tokens
never reach a log: the request log redacts ``token=`` from URLs.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from html import escape as html_escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, redirect, render_template, request, url_for
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Response as BaseResponse

from match.crowd.server_store import (
    Clock,
    CrowdStore,
    MTurkError,
    WorkerAccount,
    WorkerError,
    question_external_url,
    question_frame_height,
    question_html,
)

__all__ = [
    "create_crowd_app",
    "create_worker",
    "crowd_store",
    "serve",
    "set_balance",
    "rewrite_html_question",
    "RedactingRequestHandler",
]

log = logging.getLogger(__name__)

TARGET_PREFIX = "MTurkRequesterServiceV20170117"
WORKER_COOKIE = "match_crowd_worker"
ADMIN_TOKEN_ENV = "MATCH_CROWD_ADMIN_TOKEN"
MAX_BODY_BYTES = 1024 * 1024
# What MTurk puts in assignmentId while a worker previews a HIT (its forms can't be submitted).
PREVIEW_ASSIGNMENT_ID = "ASSIGNMENT_ID_NOT_AVAILABLE"
_EXTENSION = "match_crowd"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s]+")
_FORM_ACTION = re.compile(r"""(\baction\s*=\s*)(["'])[^"']*/mturk/externalSubmit\2""", re.IGNORECASE)
_SUBMIT_FORM = re.compile(r"""<form\b[^>]*/mturk/externalSubmit[^>]*>""", re.IGNORECASE)
_ASSIGNMENT_INPUT = re.compile(
    r"""<input\b[^>]*\bname\s*=\s*(["']?)assignmentId\1[\s/>][^>]*>?""", re.IGNORECASE
)
_VALUE_ATTRIBUTE = re.compile(r"""\svalue\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)""", re.IGNORECASE)


class RedactingRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, with ``token=...`` in logged URLs replaced by REDACTED."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.path = _TOKEN_IN_URL.sub(r"\1REDACTED", self.path)
        self.requestline = _TOKEN_IN_URL.sub(r"\1REDACTED", self.requestline)
        super().log_request(code, size)


def crowd_store(app: Flask) -> CrowdStore:
    """The :class:`CrowdStore` behind an app made by :func:`create_crowd_app`."""
    store: CrowdStore = app.extensions[_EXTENSION]
    return store


def _requester(authorization: str) -> str:
    """The requester a call is for: the access key id of its SigV4 Authorization header."""
    found = _CREDENTIAL.search(authorization)
    return found.group(1) if found else "anonymous"


def _aws_error(type_name: str, message: str, status: int, turk_code: str | None = None) -> Response:
    body: dict[str, str] = {"__type": type_name, "Message": message}
    if turk_code is not None:
        body["TurkErrorCode"] = turk_code
    return Response(
        json.dumps(body),
        status=status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def rewrite_html_question(html: str, assignment_id: str, submit_url: str) -> str:
    """An HTMLQuestion's HTML as this server shows it to a worker.

    Forms that post to MTurk's ``.../mturk/externalSubmit`` (production or sandbox) post
    to ``submit_url`` instead, and their ``assignmentId`` field carries ``assignment_id``;
    a form without that field gets a hidden one, as MTurk requires it.
    """
    value = html_escape(assignment_id)
    action = html_escape(submit_url)
    html = _FORM_ACTION.sub(lambda m: f'{m.group(1)}"{action}"', html)

    def fill(match: re.Match[str]) -> str:
        tag = _VALUE_ATTRIBUTE.sub("", match.group(0))
        end = len(tag) - (2 if tag.endswith("/>") else 1 if tag.endswith(">") else 0)
        return f'{tag[:end]} value="{value}"{tag[end:]}'

    html, filled = _ASSIGNMENT_INPUT.subn(fill, html)
    if not filled:
        hidden = f'<input type="hidden" name="assignmentId" value="{value}">'
        html = _SUBMIT_FORM.sub(lambda m: m.group(0) + hidden, html)
    return html


def _format_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _format_duration(seconds: float) -> str:
    """``seconds`` in its two largest units, a zero second unit left out: "1 d 2 h", "10 min"."""
    left = max(0, int(seconds))
    units = [(left // 86400, "d"), (left % 86400 // 3600, "h"), (left % 3600 // 60, "min"), (left % 60, "s")]
    while len(units) > 1 and units[0][0] == 0:
        units.pop(0)
    shown = units[:2] if len(units) > 1 and units[1][0] else units[:1]
    return " ".join(f"{count} {unit}" for count, unit in shown)


def create_crowd_app(
    data_dir: str | Path,
    *,
    admin_token: str | None = None,
    initial_balance: str = "10000.00",
    clock: Clock | None = None,
    store: CrowdStore | None = None,
) -> Flask:
    """The crowd server's Flask app over ``data_dir`` (its SQLite store is made there).

    ``admin_token`` guards ``/admin/*`` (default: the ``MATCH_CROWD_ADMIN_TOKEN``
    environment variable; without either the admin API answers 403). ``clock`` (epoch
    seconds) is for tests; ``store`` reuses an open store instead of opening one.
    """
    if store is None:
        kwargs: dict[str, Any] = {"initial_balance": initial_balance}
        if clock is not None:
            kwargs["clock"] = clock
        store = CrowdStore(data_dir, **kwargs)
    admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV)
    app = Flask(__name__, template_folder=str(Path(__file__).parent / "templates"))
    # A CreateHIT body is at most a 64 kB Question and some fields; an answer form is small.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions[_EXTENSION] = store
    app.jinja_env.filters["when"] = _format_time
    app.jinja_env.globals["duration"] = _format_duration
    # Each worker page is rendered afresh (deadlines move); keep browsers from caching one.
    app.after_request(_no_store)
    _add_requester_api(app, store)
    _add_worker_pages(app, store)
    _add_admin_api(app, store, admin_token)
    return app


def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _add_requester_api(app: Flask, store: CrowdStore) -> None:
    operations = set(store.operations())

    @app.get("/")
    def index() -> str:
        return render_template("index.html", operations=sorted(operations))

    @app.post("/")
    def mturk_api() -> Response:
        prefix, _, operation = request.headers.get("X-Amz-Target", "").partition(".")
        if prefix != TARGET_PREFIX or operation not in operations:
            return _aws_error("UnknownOperationException", f"Unknown operation {operation or '(none)'}.", 400)
        try:
            params = json.loads(request.get_data() or b"{}")
        except ValueError:
            return _aws_error("SerializationException", "The request body is not JSON.", 400)
        if not isinstance(params, dict):
            return _aws_error("SerializationException", "The request body must be a JSON object.", 400)
        try:
            result = store.call(_requester(request.headers.get("Authorization", "")), operation, params)
        except MTurkError as exc:
            return _aws_error(exc.type_name, exc.message, 500 if exc.fault else 400, exc.turk_code)
        except Exception:
            log.exception("crowd server: %s failed", operation)
            return _aws_error(
                "ServiceFault",
                "The crowd server failed to process the request.",
                500,
                "AWS.ServiceUnavailable",
            )
        return Response(
            json.dumps(result),
            content_type="application/x-amz-json-1.1",
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )


def _add_worker_pages(app: Flask, store: CrowdStore) -> None:
    def current_worker() -> str | None:
        token = request.cookies.get(WORKER_COOKIE)
        return store.authenticate_worker(token) if token else None

    def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(**kwargs: Any) -> Any:
            worker_id = current_worker()
            if worker_id is None:
                return redirect(url_for("worker_home"))
            return view(worker_id, **kwargs)

        wrapper.__name__ = view.__name__
        return wrapper

    def sign_in(token: str) -> BaseResponse:
        if store.authenticate_worker(token) is None:
            return Response(
                render_template("login.html", error="That worker token is not valid."), status=403
            )
        response = redirect(url_for("worker_home"))
        response.set_cookie(
            WORKER_COOKIE,
            token,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
            max_age=90 * 24 * 3600,
        )
        return response

    @app.get("/worker")
    def worker_home() -> Any:
        token = request.args.get("token")
        if token:
            return sign_in(token)
        worker_id = current_worker()
        if worker_id is None:
            return render_template("login.html", error=None)
        return render_template(
            "worker.html",
            worker_id=worker_id,
            now=store.now(),
            hits=store.available_hits(worker_id),
            assignments=store.worker_assignments(worker_id),
            notifications=store.worker_notifications(worker_id),
            bonuses=store.worker_bonuses(worker_id),
            message=request.args.get("message"),
        )

    @app.post("/worker/login")
    def worker_login() -> BaseResponse:
        return sign_in(request.form.get("token", "").strip())

    @app.post("/worker/logout")
    def worker_logout() -> BaseResponse:
        response = redirect(url_for("worker_home"))
        response.delete_cookie(WORKER_COOKIE)
        return response

    @app.post("/worker/accept")
    @signed_in
    def worker_accept(worker_id: str) -> BaseResponse:
        try:
            assignment_id = store.accept_hit(worker_id, request.form.get("hit_id", ""))
        except WorkerError as exc:
            return redirect(url_for("worker_home", message=str(exc)))
        return redirect(url_for("worker_task", assignment_id=assignment_id))

    def frame_url(
        question: str, content: str, worker_id: str, hit_id: str, assignment_id: str
    ) -> tuple[str, bool]:
        """Where the frame showing ``question`` points, and whether that is the requester's
        site: MTurk's query parameters go to an ExternalURL or to our ``content`` URL."""
        params = urlencode(
            {
                "assignmentId": assignment_id,
                "hitId": hit_id,
                "workerId": worker_id,
                "turkSubmitTo": request.url_root.rstrip("/"),
            }
        )
        external = question_external_url(question)
        if external is not None:
            return external + ("&" if "?" in external else "?") + params, True
        return content + "?" + params, False

    def sandboxed(html: str) -> Response:
        response = Response(html, content_type="text/html; charset=utf-8")
        # The requester's HTML runs in an opaque origin: it can post its form, nothing of ours.
        response.headers["Content-Security-Policy"] = "sandbox allow-forms allow-scripts allow-modals"
        return response

    def task_page(question: str, content: str, worker_id: str, hit_id: str, assignment_id: str,
                  *, hit: Mapping[str, Any] | None = None,
                  assignment: Mapping[str, Any] | None = None) -> str:
        """The page around a HIT's question: a preview (``hit``) or a taken assignment."""
        frame, external = frame_url(question, content, worker_id, hit_id, assignment_id)
        return render_template("task.html", hit=hit, assignment=assignment, frame=frame, external=external,
                               height=question_frame_height(question), now=store.now())

    @app.get("/worker/hits/<hit_id>")
    @signed_in
    def worker_preview(worker_id: str, hit_id: str) -> Any:
        try:
            hit = store.preview_hit(worker_id, hit_id)
        except WorkerError as exc:
            return redirect(url_for("worker_home", message=str(exc)))
        content = url_for("worker_preview_content", hit_id=hit_id)
        return task_page(hit["Question"], content, worker_id, hit_id, PREVIEW_ASSIGNMENT_ID, hit=hit)

    @app.get("/worker/hits/<hit_id>/content")
    @signed_in
    def worker_preview_content(worker_id: str, hit_id: str) -> Response:
        try:
            html = question_html(store.preview_hit(worker_id, hit_id)["Question"])
        except WorkerError:
            abort(404)
        if html is None:
            abort(404)
        return sandboxed(rewrite_html_question(html, PREVIEW_ASSIGNMENT_ID, url_for("external_submit")))

    @app.get("/worker/assignments/<assignment_id>")
    @signed_in
    def worker_task(worker_id: str, assignment_id: str) -> Any:
        try:
            assignment = store.worker_assignment(worker_id, assignment_id)
        except WorkerError:
            abort(404)
        content = url_for("worker_task_content", assignment_id=assignment_id)
        return task_page(assignment["Question"], content, worker_id, assignment["HITId"], assignment_id,
                         assignment=assignment)

    @app.get("/worker/assignments/<assignment_id>/content")
    @signed_in
    def worker_task_content(worker_id: str, assignment_id: str) -> Response:
        try:
            assignment = store.worker_assignment(worker_id, assignment_id)
        except WorkerError:
            abort(404)
        html = question_html(assignment["Question"])
        if html is None or assignment["Status"] != "Accepted":
            abort(404)
        return sandboxed(rewrite_html_question(html, assignment_id, url_for("external_submit")))

    @app.post("/worker/assignments/<assignment_id>/return")
    @signed_in
    def worker_return(worker_id: str, assignment_id: str) -> BaseResponse:
        try:
            store.return_assignment(worker_id, assignment_id)
        except WorkerError as exc:
            return redirect(url_for("worker_home", message=str(exc)))
        return redirect(url_for("worker_home", message="HIT returned."))

    @app.post("/mturk/externalSubmit")
    def external_submit() -> Any:
        fields = [(name, value) for name, values in request.form.lists() for value in values]
        assignment_id = request.form.get("assignmentId", "")
        try:
            store.submit_assignment(assignment_id, fields)
        except WorkerError as exc:
            return Response(render_template("submitted.html", error=str(exc)), status=409)
        return render_template("submitted.html", error=None)


def _add_admin_api(app: Flask, store: CrowdStore, admin_token: str | None) -> None:
    def authorized() -> None:
        if not admin_token:
            abort(
                Response(
                    json.dumps({"error": f"the admin API is off: set {ADMIN_TOKEN_ENV}"}),
                    status=403,
                    content_type="application/json",
                )
            )
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode("utf-8"), admin_token.encode("utf-8")):
            abort(
                Response(
                    json.dumps({"error": "bad admin token"}), status=401, content_type="application/json"
                )
            )

    @app.post("/admin/workers")
    def admin_create_worker() -> Response:
        authorized()
        body = request.get_json(silent=True) or {}
        account = store.create_worker(body.get("Name"), locale=str(body.get("Locale", "US")))
        return Response(
            json.dumps({"WorkerId": account.worker_id, "Token": account.token}),
            content_type="application/json",
            status=201,
        )

    @app.post("/admin/balance")
    def admin_set_balance() -> Response:
        authorized()
        body = request.get_json(silent=True) or {}
        requester, amount = body.get("AccessKeyId"), body.get("AvailableBalance")
        if not isinstance(requester, str) or not isinstance(amount, str):
            return Response(
                json.dumps({"error": "send AccessKeyId and AvailableBalance (a string)"}),
                status=400,
                content_type="application/json",
            )
        try:
            store.set_balance(requester, amount)
        except MTurkError as exc:
            return Response(json.dumps({"error": exc.message}), status=400, content_type="application/json")
        return Response(
            json.dumps(store.call(requester, "GetAccountBalance", {})), content_type="application/json"
        )


def create_worker(data_dir: str | Path, name: str | None = None, *, locale: str = "US") -> WorkerAccount:
    """Make a worker in ``data_dir``'s store (for ``match crowd worker add``); the token is
    returned once, only its hash is kept. The worker signs in at ``/worker``."""
    store = CrowdStore(data_dir)
    try:
        return store.create_worker(name, locale=locale)
    finally:
        store.close()


def set_balance(data_dir: str | Path, access_key_id: str, amount: str) -> None:
    """Set the AvailableBalance of requester ``access_key_id`` in ``data_dir``'s store."""
    store = CrowdStore(data_dir)
    try:
        store.set_balance(access_key_id, amount)
    finally:
        store.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    data_dir: str | Path = "crowd-data",
    *,
    admin_token: str | None = None,
    initial_balance: str = "10000.00",
    simulate: str | None = None,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the crowd server until interrupted (or until ``stop`` is set).

    ``simulate`` (e.g. ``"workers=20,accuracy=0.7,spammers=0.2"``, see
    :class:`match.crowd.workers.SimulationSettings`) runs simulated workers in a
    background thread. ``ready`` is called with the base URL once the port is bound.
    """
    from match.crowd.workers import SimulatedCrowd, SimulationSettings

    app = create_crowd_app(data_dir, admin_token=admin_token, initial_balance=initial_balance)
    store = crowd_store(app)
    simulation = SimulatedCrowd(store, SimulationSettings.parse(simulate)) if simulate else None
    server = make_server(host, port, app, threaded=True, request_handler=RedactingRequestHandler)
    url = f"http://{host}:{server.server_port}/"
    log.info("crowd server on %s (boto3 endpoint_url; workers sign in at %sworker)", url, url)
    if stop is not None:

        def shut_down_when_stopped() -> None:
            stop.wait()
            server.shutdown()

        threading.Thread(target=shut_down_when_stopped, daemon=True).start()
    if simulation is not None:
        simulation.start()
    if ready is not None:
        ready(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if simulation is not None:
            simulation.stop()
        server.server_close()
        store.close()
