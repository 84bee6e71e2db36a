"""The HTTP endpoints, wire-compatible with dsys/match (and TRUEPIC/match).

Views are thin: read the fields (:mod:`match.api.fields`), call :mod:`match.service`,
wrap the result in the envelope (:func:`match.api.errors.respond`). Errors are raised,
never returned; :mod:`match.api.errors` renders them. The store is reached only through
:func:`match.app.get_store`, so no view knows which backend is behind it.

==========  ===================  =================================================
endpoint    methods              result
==========  ===================  =================================================
/add        POST                 ``[]``
/delete     DELETE, POST         ``[]`` (404 when the filepath is unknown)
/search     POST                 ``[{"score", "filepath", "metadata", "distance", "found_by"}, ...]``
/compare    POST                 ``[{"score", "distance", "inliers", "region"}]``
/count      GET, POST            ``[n]``
/list       GET, POST            ``[filepath, ...]``
/ping       GET, POST            ``[]`` (liveness; never touches the store)
/ready      GET                  ``[]`` or 503 (readiness; asks the store)
==========  ===================  =================================================

Besides the envelope endpoints, ``/openapi.json`` serves the OpenAPI 3 description of
all of them (``match/openapi.json``, checked against these routes by
tests/api/test_openapi.py) and ``/metrics`` the Prometheus metrics (text format;
404 when ``MATCH_METRICS`` is off). Which endpoints need which API key:
:mod:`match.api.auth`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, request

from match import __version__, metrics, service
from match.api.errors import respond
from match.api.fields import Fields
from match.app import get_fetcher, get_store
from match.errors import NotFound

__all__ = ["blueprint"]

blueprint = Blueprint("api", __name__)


def _fields() -> Fields:
    return Fields.from_request(request)


@blueprint.route("/add", methods=["POST"])
def add() -> Response:
    """Sign the image (``url`` or ``image``) and store it under ``filepath``."""
    fields = _fields()
    filepath = service.check_filepath(fields.text("filepath"))
    # Checked here too (service.add checks it again) so a bad one costs no fetch.
    metadata = service.parse_metadata(fields.raw("metadata"),
                                      max_bytes=service.metadata_limit(current_app.config))
    data = fields.image("url", "image", get_fetcher())
    service.add(get_store(), current_app.config, filepath=filepath, data=data, metadata=metadata)
    return respond("add", [])


@blueprint.route("/delete", methods=["DELETE", "POST"])
def delete() -> Response:
    """Remove the image stored under ``filepath``."""
    filepath = service.check_filepath(_fields().text("filepath"))
    service.delete(get_store(), filepath, current_app.config)
    return respond("delete", [])


@blueprint.route("/search", methods=["POST"])
def search() -> Response:
    """Stored images like the given one, best first."""
    fields = _fields()
    all_orientations = fields.boolean("all_orientations", default=True)
    limit = fields.integer("limit")
    cutoff = fields.number("cutoff")
    settings = current_app.config
    # Check the numbers before spending a fetch and a signature on the image.
    service.check_limit(limit, settings, default=int(settings["MATCH_SEARCH_LIMIT"]))
    service.check_cutoff(cutoff, settings)
    data = fields.image("url", "image", get_fetcher())
    matches = service.search(get_store(), settings, data, all_orientations=all_orientations,
                             limit=limit, cutoff=cutoff)
    result: list[Any] = [service.hit_json(m) for m in matches]
    # --- crowd verification (match/crowd, docs/crowd.md) ---
    # verify=true sends the query and its top verify_top matches to workers (it spends
    # money, so it needs a read-write key); every hit shows its crowd verdict when one exists.
    from match.crowd.api import search_verdicts, verify_search

    verify_top = fields.integer("verify_top")
    if fields.boolean("verify", default=False):
        from match.api.auth import check_request

        check_request("rw")
        for sent in verify_search(data, matches, verify_top):
            if "error" in sent:
                for entry in result:
                    if entry["filepath"] == sent["filepath"]:
                        entry["crowd"] = {"error": sent["error"]}
    verdicts = search_verdicts(data, [m.filepath for m in matches])
    for entry in result:
        if entry["filepath"] in verdicts:
            entry["crowd"] = verdicts[entry["filepath"]]
    # --- end crowd verification ---
    return respond("search", result)


@blueprint.route("/compare", methods=["POST"])
def compare() -> Response:
    """Score two images against each other (nothing is stored or searched)."""
    fields = _fields()
    fetcher = get_fetcher()
    first = fields.image("url1", "image1", fetcher)
    second = fields.image("url2", "image2", fetcher)
    comparison = service.compare(current_app.config, first, second)
    return respond("compare", [service.comparison_json(comparison)])



@blueprint.route("/count", methods=["GET", "POST"])
def count() -> Response:
    """Number of stored images."""
    return respond("count", [service.count(get_store())])


@blueprint.route("/list", methods=["GET", "POST"], endpoint="list")
def list_() -> Response:
    """Stored filepaths in ascending order: ``offset`` (default 0), ``limit`` (default 20)."""
    fields = _fields()
    offset, limit = fields.integer("offset"), fields.integer("limit")
    settings = current_app.config
    service.check_offset(offset)
    service.check_limit(limit, settings, default=20)
    return respond("list", service.list_filepaths(get_store(), settings, offset=offset, limit=limit))


@blueprint.route("/ping", methods=["GET", "POST"])
def ping() -> Response:
    """Liveness: the process answers. Never touches the store."""
    return respond("ping", [])


@blueprint.route("/ready", methods=["GET"])
def ready() -> Response:
    """Readiness: the store answers (503 otherwise)."""
    get_store().check()
    return respond("ready", [])


@functools.cache
def _openapi_text() -> str:
    return resources.files("match").joinpath("openapi.json").read_text(encoding="utf-8")


@blueprint.route("/openapi.json", methods=["GET"], endpoint="openapi")
def openapi() -> Response:
    """The OpenAPI 3 description of this API (a static file shipped in the package)."""
    spec = json.loads(_openapi_text())
    spec["info"]["version"] = __version__
    return current_app.response_class(json.dumps(spec, ensure_ascii=False), mimetype="application/json")


@blueprint.route("/metrics", methods=["GET"], endpoint="metrics")
def metrics_() -> Response:
    """Prometheus metrics (text exposition format), summed over gunicorn workers."""
    if not current_app.config.get("MATCH_METRICS", True):
        raise NotFound("metrics are off on this server (MATCH_METRICS=false)")
    return current_app.response_class(metrics.exposition(), mimetype=None,
                                      headers={"Content-Type": metrics.CONTENT_TYPE})
