"""Settings: one declarative table, read in one place.

Every setting is a :class:`Setting` (environment name, default, parser, help), in the
spirit of datasette's ``SETTINGS``. ``tests/test_docs.py`` fails when one is missing
from README.md, so the table and the docs can't drift.

Config flows one way (as in flask's tutorial factory and HMA's ``OMM_*`` env):

1. the defaults below,
2. a file named by ``MATCH_CONFIG`` (TOML or JSON, keys are the setting names),
3. the environment (``MATCH_*`` and ``ELASTICSEARCH_URL``),
4. the mapping passed to :func:`load` (tests).

Only this module and :mod:`match.app` read ``os.environ``.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Setting", "SETTINGS", "load", "parse_bool"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(value: str | bool) -> bool:
    """Parse a boolean strictly: true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {value!r}")


def _positive_int(value: str | int) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _non_negative_int(value: str | int) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return number


def _unit_float(value: str | float) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    return number


def _positive_float(value: str | float) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def _string(value: str) -> str:
    return str(value)


def _string_list(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    return [item.strip() for item in str(value).split(",") if item.strip()]


def _money(value: str | float) -> str:
    """US dollars with at most two decimals, e.g. ``0.05``; returned as that string."""
    text = str(value).strip()
    try:
        amount = float(text)
    except ValueError:
        raise ValueError(f"expected an amount of US dollars like 0.05, got {value!r}") from None
    if amount < 0 or not math.isfinite(amount) or round(amount, 2) != amount:
        raise ValueError(f"expected an amount of US dollars >= 0 with at most 2 decimals, got {value!r}")
    return f"{amount:.2f}"


def _crowd_endpoint(value: str) -> str:
    text = str(value).strip()
    if text in ("sandbox", "production") or text.startswith(("http://", "https://")):
        return text
    raise ValueError(f"expected sandbox, production or an http(s) URL of an MTurk-compatible endpoint, got {value!r}")


def _int_between(low: int, high: int) -> Callable[[str | int], int]:
    def parse(value: str | int) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {value!r}")
        return number

    return parse


def _json_list(value: str | list[Any]) -> list[Any]:
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, list):
        raise ValueError("expected a JSON list")
    return data


#: Image formats match can decode (match.image.FORMATS, repeated here so that reading
#: settings does not import Pillow; a test keeps the two equal).
_IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA")


def _formats(value: str | list[str]) -> list[str]:
    names = [name.upper() for name in _string_list(value)]
    unknown = [name for name in names if name not in _IMAGE_FORMATS]
    if unknown or not names:
        raise ValueError(f"expected a comma-separated subset of {', '.join(_IMAGE_FORMATS)}; "
                         f"got {value!r}")
    return names


@dataclass(frozen=True)
class Setting:
    """One setting: its environment name, default, parser and a line of help."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = _string


SETTINGS: tuple[Setting, ...] = (
    # --- store -------------------------------------------------------------------
    Setting("MATCH_STORE", "auto", "Which store: `local` (embedded SQLite), `elasticsearch`, "
            "or `auto` (Elasticsearch when ELASTICSEARCH_URL is set, else local).",
            _choice("auto", "local", "elasticsearch")),
    Setting("MATCH_DATA_DIR", "./match-data", "Directory of the embedded store (and kept crowd "
            "images); created if missing."),
    Setting("ELASTICSEARCH_URL", "", "Elasticsearch URL(s), comma-separated, e.g. "
            "`http://127.0.0.1:9200`. Setting it selects the Elasticsearch store."),
    Setting("MATCH_INDEX", "images", "Elasticsearch index name."),
    Setting("MATCH_ES_API_KEY", "", "Elasticsearch API key (base64 `id:key`), if the cluster needs one."),
    Setting("MATCH_ES_USERNAME", "", "Elasticsearch basic-auth user."),
    Setting("MATCH_ES_PASSWORD", "", "Elasticsearch basic-auth password."),
    Setting("MATCH_ES_CA_CERTS", "", "Path to the CA bundle that signed the cluster's TLS certificate."),
    Setting("MATCH_ES_TIMEOUT", 5.0, "Seconds before an Elasticsearch request counts as failed (503).",
            _positive_float),
    Setting("MATCH_ES_KNN", True, "Also retrieve candidates by kNN on the signature vector "
            "(recall beyond the word query).", parse_bool),
    Setting("MATCH_ES_REFRESH", "wait_for", "Refresh policy of single adds: `wait_for` (an "
            "acknowledged add is searchable), `false` (faster, searchable within ~1 s) or `true`.",
            _choice("wait_for", "false", "true")),
    Setting("MATCH_ES_CANDIDATES", 100, "Candidates per query orientation taken from the word query "
            "(and as many from kNN), then reranked with the exact distance.", _positive_int),
    Setting("MATCH_ES_SHARDS", 1, "Primary shards of the index match creates (fixed once created).",
            _positive_int),
    Setting("MATCH_ES_REPLICAS", 1, "Replicas of each shard of the index match creates (1 survives "
            "losing a node; a single-node cluster stays yellow with 1).", _non_negative_int),
    # --- search ------------------------------------------------------------------
    Setting("MATCH_CUTOFF", 0.45, "Largest normalized signature distance reported as a match "
            "(score = (1 - distance) x 100, so 0.45 means score >= 55).", _unit_float),
    Setting("MATCH_LOCAL_FEATURES", True, "Index local features (ORB keypoints as visual words) beside "
            "the signature and verify candidates geometrically, so crops, borders, rotations and "
            "screenshots are found and look-alikes are not; `false` keeps the signature-only footprint.",
            parse_bool),
    Setting("MATCH_SURE_DISTANCE", 0.2, "Signature distance up to which a hit needs no verification; "
            "a hit between it and `cutoff` is reported only when local features confirm it.",
            _unit_float),
    Setting("MATCH_MIN_INLIERS", 10, "Fewest geometrically consistent keypoint matches (RANSAC "
            "inliers) that confirm a hit.", _int_between(4, 1000)),
    Setting("MATCH_VERIFY_CANDIDATES", 20, "Candidates verified per search: the best by visual words, "
            "and as many of the nearest signatures.", _int_between(1, 200)),
    Setting("MATCH_SEARCH_LIMIT", 10, "Default number of results of /search (`limit` overrides).",
            _positive_int),
    Setting("MATCH_MAX_SEARCH_LIMIT", 1000, "Largest `limit` a client may ask of /search and /list.",
            _positive_int),
    # --- images ------------------------------------------------------------------
    Setting("MATCH_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, "Largest request body / fetched image, in bytes (413).",
            _positive_int),
    Setting("MATCH_MAX_PIXELS", 50_000_000, "Largest image in pixels, checked before decoding (413).",
            _positive_int),
    Setting("MATCH_MAX_IMAGE_SIDE", 30_000, "Largest width or height in pixels, checked before decoding "
            "(413); 0 means only MATCH_MAX_PIXELS applies.", _non_negative_int),
    Setting("MATCH_IMAGE_FORMATS", list(_IMAGE_FORMATS), "Comma-separated image formats accepted "
            "(Pillow names, a subset of the default); others are 415.", _formats),
    Setting("MATCH_MAX_METADATA_BYTES", 64 * 1024, "Largest `metadata` JSON object of /add, in bytes "
            "of compact UTF-8 JSON (400).", _positive_int),
    Setting("MATCH_EXIF_TRANSPOSE", False, "Apply the EXIF orientation before signing (image-match ignores "
            "it; all-orientation search covers rotated photos either way).", parse_bool),
    Setting("MATCH_FETCH_TIMEOUT", 10.0, "Seconds allowed to fetch a `url` (connect and each read).",
            _positive_float),
    Setting("MATCH_FETCH_ALLOW_NETWORKS", [], "Comma-separated CIDRs `url` may resolve to beyond public "
            "addresses (e.g. `127.0.0.0/8,10.0.0.0/8`). Private, loopback, link-local and metadata "
            "addresses are refused otherwise.", _string_list),
    # --- crowd (match.crowd: verification through the MTurk API) --------------------
    Setting("MATCH_CROWD_ENDPOINT", "sandbox", "Crowd endpoint: `sandbox` (MTurk's requester sandbox, "
            "the default: nothing is paid), `production` (MTurk), or the URL of match's crowd server "
            "(`match crowd server`) or another MTurk-compatible endpoint. Credentials come from boto3's "
            "usual chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role).", _crowd_endpoint),
    Setting("MATCH_CROWD_REWARD", "0.05", "Reward per assignment, US dollars.", _money),
    Setting("MATCH_CROWD_BONUS", "0.02", "Bonus paid for a right answer to the gold pair, US dollars.", _money),
    Setting("MATCH_CROWD_ASSIGNMENTS", 3, "Assignments a task starts with.", _positive_int),
    Setting("MATCH_CROWD_MAX_ASSIGNMENTS", 9, "Most assignments a task may grow to; past 9 a follow-up "
            "HIT is made (MTurk can't extend a HIT made with fewer than 10 to 10 or more).", _positive_int),
    Setting("MATCH_CROWD_CONFIDENCE", 0.95, "Posterior probability of the same-or-not verdict at which a "
            "task completes.", _unit_float),
    Setting("MATCH_CROWD_MAX_SPREAD", 0.1, "A task with 3+ counted votes whose scores' standard deviation "
            "is at most this also completes.", _unit_float),
    Setting("MATCH_CROWD_LIFETIME", 3 * 24 * 3600, "Seconds a HIT stays available (30 to 31536000); a task "
            "still unsure then fails with code Expired.", _int_between(30, 31_536_000)),
    Setting("MATCH_CROWD_ASSIGNMENT_DURATION", 600, "Seconds a worker has to answer once they accept "
            "(30 to 31536000, MTurk's range).", _int_between(30, 31_536_000)),
    Setting("MATCH_CROWD_AUTO_APPROVAL_DELAY", 3 * 24 * 3600, "Seconds after which MTurk approves an "
            "assignment match did not review.", _non_negative_int),
    Setting("MATCH_CROWD_QUALIFICATIONS", [], "QualificationRequirements of the HIT type, as a JSON list in "
            "MTurk's shape (e.g. a minimum approval rate).", _json_list),
    Setting("MATCH_CROWD_TITLE", "Are these the same picture?", "Title of the HIT type workers see."),
    Setting("MATCH_CROWD_BUDGET", "10.00", "Most money (US dollars) the crowd may commit: rewards, bonuses and "
            "MTurk's fees (20 %; 40 % on HITs of 10+ assignments). Past it: 402 BudgetExceeded, nothing created.",
            _money),
    Setting("MATCH_CROWD_BLOCK_BELOW", 0.5, "Workers whose exact agreement with gold answers is shown to be "
            "below this (one-sided binomial test, 5 %) are blocked.", _unit_float),
    Setting("MATCH_CROWD_BLOCK_MIN_GOLD", 8, "Gold answers needed before a worker can be blocked.", _positive_int),
    Setting("MATCH_CROWD_REJECT_FAILED_GOLD", False, "Reject (unpaid) assignments whose gold answer is wrong; "
            "by default they are approved, their vote is dropped and no bonus is paid.", parse_bool),
    Setting("MATCH_CROWD_AUTO_REVIEW", True, "Approve or reject each assignment as it is collected. `false`: "
            "they wait for `match crowd review` (look at `match crowd report --html` first); bonuses and "
            "notices follow the review, and MTurk approves what is left after the auto-approval delay.",
            parse_bool),
    Setting("MATCH_CROWD_VERIFY_TOP", 3, "Top matches of a `verify=true` search sent to workers (1 to 20, "
            "the range a request's `verify_top` may ask for).", _int_between(1, 20)),
    Setting("MATCH_CROWD_PUBLIC_URL", "", "Base URL at which workers reach this match server, for the images "
            "it keeps and serves (default: http://MATCH_HOST:MATCH_PORT)."),
    Setting("MATCH_CROWD_MEDIA", "local", "Where images sent to workers are kept: `local` (MATCH_DATA_DIR, "
            "served at signed expiring URLs) or `s3` (presigned URLs).", _choice("local", "s3")),
    Setting("MATCH_CROWD_S3_BUCKET", "", "S3 bucket for MATCH_CROWD_MEDIA=s3."),
    Setting("MATCH_CROWD_MEDIA_TTL", 4 * 24 * 3600, "Seconds an image URL stays valid beyond the HIT "
            "lifetime.", _positive_int),
    Setting("MATCH_CROWD_SECRET", "", "Secret signing image URLs; empty: a random one kept in "
            "MATCH_DATA_DIR/crowd-secret."),
    # --- server ------------------------------------------------------------------
    Setting("MATCH_HOST", "127.0.0.1", "Address `match serve` binds."),
    Setting("MATCH_PORT", 8000, "Port `match serve` binds.", _positive_int),
    Setting("MATCH_WORKERS", 0, "gunicorn workers; 0 means 2 x CPU cores.", _non_negative_int),
    Setting("MATCH_TIMEOUT", 60, "gunicorn worker timeout in seconds.", _positive_int),
    Setting("MATCH_LOG_LEVEL", "info", "Log level: debug, info, warning, error.",
            _choice("debug", "info", "warning", "error")),
    Setting("MATCH_ACCESS_LOG", True, "Write one JSON line per request (method, path without the "
            "query string, status, duration, bytes, remote address) to the `match.access` logger.",
            parse_bool),
    Setting("MATCH_METRICS", True, "Serve Prometheus metrics at /metrics (behind an API key when keys "
            "are set).", parse_bool),
    # --- API keys (match/api/auth.py) --------------------------------------------
    Setting("MATCH_API_KEYS", [], "Comma-separated `key:role` API keys, keys of 16+ characters; role "
            "`ro` may search, compare, count and list, `rw` may also add and delete. No keys (here or "
            "in the file): the API is open. /ping, /ready and /openapi.json stay open.", _string_list),
    Setting("MATCH_API_KEYS_FILE", "", "File of `key:role` lines (`#` comments), read at startup and "
            "added to MATCH_API_KEYS."),
    # --- web UI (match/web, docs/web.md) ----------------------------------------
    Setting("MATCH_UI", True, "Serve the web UI at `/ui/` (search, compare, browse, crowd dashboard); "
            "`/` redirects there.", parse_bool),
    Setting("MATCH_THUMBNAILS", True, "Keep a small JPEG thumbnail of every image added over HTTP, in "
            "`MATCH_DATA_DIR/thumbs/` (about 10-20 KB each), for the UI; off: the UI shows the source "
            "URL or a placeholder.", parse_bool),
    Setting("MATCH_THUMBNAIL_SIZE", 256, "Longest side of a thumbnail, in pixels.", _positive_int),
    Setting("MATCH_UI_SECRET", "", "Secret that signs the UI's CSRF tokens; empty: a random one kept in "
            "`MATCH_DATA_DIR/ui-secret` (set it when several hosts serve the UI)."),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def _read_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return data


def load(overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return every setting's value: defaults, then MATCH_CONFIG file, env, overrides.

    Raises ValueError naming the setting when a value does not parse.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}
    layers: list[Mapping[str, Any]] = []
    if env.get("MATCH_CONFIG"):
        layers.append(_read_file(env["MATCH_CONFIG"]))
    layers.append({name: env[name] for name in _BY_NAME if name in env})
    if overrides:
        layers.append(overrides)
    for layer in layers:
        for name, raw in layer.items():
            setting = _BY_NAME.get(name)
            if setting is None:
                if name.startswith("MATCH_") and layer is not overrides:
                    raise ValueError(f"unknown setting {name}; known: {', '.join(sorted(_BY_NAME))}")
                values[name] = raw  # extra keys (e.g. Flask's TESTING) pass through
                continue
            try:
                values[name] = raw if raw is setting.default else setting.parse(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {exc}") from exc
    if values["MATCH_STORE"] == "auto":
        values["MATCH_STORE"] = "elasticsearch" if values["ELASTICSEARCH_URL"] else "local"
    return values


def markdown_table() -> str:
    """The settings as a Markdown table (README.md's "Settings" section is this text)."""
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = setting.default
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(default) or "(empty)"
        elif default == "":
            shown = "(empty)"
        else:
            shown = str(default)
        rows.append(f"| `{setting.name}` | `{shown}` | {setting.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
