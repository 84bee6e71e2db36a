"""The crowd's HTTP face on the match server: the Tasks API, kept images, the report.

Routes of the blueprint ``bp`` (register it with ``app.register_blueprint(bp)``)::

    PUT    /crowd/functions/<function>/tasks/<name>   {"input": {"image1": {"url"}, "image2": {"url"}}}
    GET    /crowd/functions/<function>/tasks/<name>   the task (synced with the endpoint first)
    DELETE /crowd/functions/<function>/tasks/<name>   409 while processing; the name is free after
    GET    /crowd/functions/<function>/tasks          ?state=&prefix=&limit=&offset=
    GET    /crowd/media/<key>?expires=&sig=           a kept image (signed, expiring URL)
    POST   /crowd/gold                                {"image1": {"url"}, "image2": {"url"}, "label"}
    GET    /crowd/gold                                the gold set
    POST   /crowd/sync                                one sync pass (what ``match crowd sync`` does)
    GET    /crowd/report                              the HTML report

``<function>`` is ``image-similarity`` or ``image-similarity-test`` (completes at once
with a mock result, no HIT). A task is ``{"taskName", "input", "problemDetails",
"state", "result"}``, the shape of Amazon's image-similarity function, so errors here
are rendered in that style too: ``{"error": {"code": "<Class>", "message": "..."}}``
with the status of the :mod:`match.errors` class (402 for BudgetExceeded, 409 ...).

For the search integration :func:`verify_search` and :func:`search_verdicts` are the two
calls ``POST /search`` makes (see docs/crowd.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from match.crowd.service import CrowdService
from match.errors import BadRequest, MatchError

__all__ = ["bp", "ENDPOINT_ROLES", "get_crowd", "verify_search", "search_verdicts"]

log = logging.getLogger(__name__)

bp = Blueprint("crowd", __name__, url_prefix="/crowd")

_EXTENSION = "match.crowd"


def get_crowd(app: Flask | None = None) -> CrowdService:
    """This app's :class:`CrowdService`, built on first use from the app's settings."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    service = app.extensions.get(_EXTENSION)
    if service is None:
        service = app.extensions[_EXTENSION] = CrowdService.from_config(app.config)
    assert isinstance(service, CrowdService)
    return service


def verify_search(data: bytes, matches: Sequence[Any], top: int | None = None) -> list[dict[str, Any]]:
    """``POST /search`` with ``verify=true``: tasks for the query against its top matches.

    ``matches`` as ``service.search`` returns them; ``top`` defaults to
    ``MATCH_CROWD_VERIFY_TOP``. Returns one entry per match sent (see
    :meth:`CrowdService.verify_matches`). Raises BudgetExceeded (402) before creating any.
    """
    count = int(top if top is not None else current_app.config.get("MATCH_CROWD_VERIFY_TOP", 3))
    if not 1 <= count <= 20:
        raise BadRequest("verify_top must be between 1 and 20")
    return get_crowd().verify_matches(data, matches, top=count)


def search_verdicts(data: bytes, filepaths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The crowd verdicts known for (query, filepath) pairs: ``{filepath: verdict}``.

    Answers ``{}`` without touching anything when the crowd was never used (no
    ``crowd.sqlite3`` in ``MATCH_DATA_DIR``), so plain searches cost nothing extra.
    """
    if (
        _EXTENSION not in current_app.extensions
        and not (Path(current_app.config["MATCH_DATA_DIR"]) / "crowd.sqlite3").exists()
    ):
        return {}
    return get_crowd().verdicts(data, filepaths)


#: The API-key role each crowd endpoint needs when keys are configured (match.api.auth):
#: anything that can spend money needs a read-write key. ``media`` is open: workers open
#: those URLs, and the signature in the URL is the guard.
ENDPOINT_ROLES = {
    "put_task": "rw",
    "delete_task": "rw",
    "add_gold": "rw",
    "sync": "rw",
    "get_task": "ro",
    "list_tasks": "ro",
    "list_gold": "ro",
    "report": "ro",
}


@bp.before_request
def _guard() -> None:
    name = (request.endpoint or "").rsplit(".", 1)[-1]
    if name == "media":
        return
    from match.api.auth import check_request

    check_request(ENDPOINT_ROLES.get(name, "rw"))  # unknown endpoints fail closed


@bp.errorhandler(MatchError)
def _match_error(error: MatchError) -> tuple[Response, int]:
    if error.status >= 500:
        log.warning("%s %s -> %d %s", request.method, request.path, error.status, error.message)
    return jsonify({"error": {"code": type(error).__name__, "message": error.message}}), error.status


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> tuple[Response, int]:
    return jsonify({"error": {"code": type(error).__name__, "message": error.description}}), error.code or 500


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    return body


@bp.route("/functions/<function>/tasks/<name>", methods=["PUT"])
def put_task(function: str, name: str) -> tuple[Response, int]:
    """Create a task (or return the existing one with the same input)."""
    task = get_crowd().put_task(function, name, _json_body())
    return jsonify(task), 200


@bp.route("/functions/<function>/tasks/<name>", methods=["GET"])
def get_task(function: str, name: str) -> Response:
    """A task, synced with the crowd endpoint first while processing."""
    return jsonify(get_crowd().get_task(function, name))


@bp.route("/functions/<function>/tasks/<name>", methods=["DELETE"])
def delete_task(function: str, name: str) -> tuple[str, int]:
    """Delete a finished task."""
    get_crowd().delete_task(function, name)
    return "", 204


@bp.route("/functions/<function>/tasks", methods=["GET"])
def list_tasks(function: str) -> Response:
    """Tasks of a function, filtered by ``state`` and name ``prefix``, paged by limit/offset."""
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
    except ValueError:
        raise BadRequest("limit and offset must be integers") from None
    return jsonify(
        get_crowd().list_tasks(
            function,
            state=request.args.get("state") or None,
            name_prefix=request.args.get("prefix") or None,
            limit=limit,
            offset=offset,
        )
    )


@bp.route("/media/<key>", methods=["GET"])
def media(key: str) -> Response:
    """A kept image, while its signed URL is valid (404 otherwise, forged or expired alike)."""
    data, mime = get_crowd().media.open(key, request.args.get("expires"), request.args.get("sig"))
    response = Response(data, mimetype=mime)
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.route("/gold", methods=["POST"])
def add_gold() -> tuple[Response, int]:
    """Add a known-answer pair: ``{"image1": {"url"}, "image2": {"url"}, "label"}``."""
    body = _json_body()
    try:
        image1, image2, label = body["image1"]["url"], body["image2"]["url"], body["label"]
    except (KeyError, TypeError):
        raise BadRequest('the body must be {"image1": {"url"}, "image2": {"url"}, "label"}') from None
    gold_id = get_crowd().add_gold(str(image1), str(image2), str(label))
    return jsonify({"goldId": gold_id}), 201


@bp.route("/gold", methods=["GET"])
def list_gold() -> Response:
    """The gold set."""
    rows = get_crowd().state.gold()
    return jsonify(
        {
            "gold": [
                {
                    "goldId": g["gold_id"],
                    "image1": g["image1"],
                    "image2": g["image2"],
                    "label": g["label"],
                    "source": g["source"],
                }
                for g in rows
            ]
        }
    )


@bp.route("/sync", methods=["POST"])
def sync() -> Response:
    """One sync pass over every processing task."""
    return jsonify(get_crowd().sync().as_dict())


@bp.route("/report", methods=["GET"])
def report() -> Response:
    """The crowd report as an HTML page."""
    from match.crowd.report import build_report, render_html

    crowd = get_crowd()
    return Response(render_html(build_report(crowd), url_for_ref=crowd._url), mimetype="text/html")
