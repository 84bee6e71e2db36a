"""The operations behind every HTTP endpoint and CLI command, in one place.

The HTTP views (:mod:`match.api.views`) and the command line (:mod:`match.cli`) only
parse their input and format their output; what happens in between is here, so
``curl -F image=@a.jpg .../add`` and ``match add a.jpg`` run the same code.

Nothing here touches Flask or the request: functions take the settings mapping
(:func:`match.config.load`), the store and plain values, and raise
:mod:`match.errors` for anything the caller got wrong. The order inside :func:`add`
matters: validate every field, decode, sign, and only then upsert, so a failed add
stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from match import features as local_features
from match import fusion, image, signature, vocabulary
from match.errors import BadRequest, MissingField, NotFound, PayloadTooLarge
from match.store import Match, Record, SignatureStore
from match.store.base import MAX_FILEPATH_LENGTH

__all__ = [
    "SignedImage",
    "Comparison",
    "sign",
    "sign_file",
    "check_filepath",
    "parse_metadata",
    "make_record",
    "add",
    "delete",
    "search",
    "search_signed",
    "compare",
    "hit_json",
    "comparison_json",
    "count",
    "list_filepaths",
    "check_limit",
    "check_offset",
    "check_cutoff",
]

log = logging.getLogger(__name__)

#: Largest ``offset`` of a listing (paging a billion records deep is a mistake or an attack).
MAX_OFFSET = 1_000_000_000

#: Key under which :func:`add` records the SHA-256 of the image bytes in the
#: metadata (TRUEPIC/match stores it there too).
SHA256_KEY = "sha256"


@dataclass(frozen=True)
class SignedImage:
    """Signatures of one image: ``signatures`` is int8 (k, 648), row 0 the image as given.

    k is 1, or 8 when all orientations were asked for (rotations and mirrors, in the
    order of :func:`match.signature.generate_all`). ``sha256`` is the hex digest of
    the bytes that were decoded. ``features`` are its local features
    (:mod:`match.features`) when they were asked for: those a stored image keeps, or
    the richer ones of a query.
    """

    signatures: np.ndarray
    sha256: str
    features: local_features.Features | None = None

    @property
    def signature(self) -> np.ndarray:
        """The signature of the image as given: int8 (648,)."""
        first: np.ndarray = self.signatures[0]
        return first


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: distance in [0, 1] and score = (1 - distance) x 100.

    ``inliers`` and ``region`` (the box of the second image that the first shows) when
    local features confirm that the first image is a part or an edit of the second;
    None otherwise.
    """

    distance: float
    inliers: int | None = None
    region: tuple[int, int, int, int] | None = None

    @property
    def score(self) -> float:
        return (1.0 - self.distance) * 100.0


def local_features_on(settings: Mapping[str, Any]) -> bool:
    """Whether MATCH_LOCAL_FEATURES is on (library callers without it: on)."""
    return bool(settings.get("MATCH_LOCAL_FEATURES", True))


def sign(data: bytes, settings: Mapping[str, Any], *, all_orientations: bool = False,
         features: str | None = None) -> SignedImage:
    """Decode image bytes and sign them; with ``features`` (``"stored"`` or ``"query"``)
    also extract local features from the same decoded pixels.

    Raises UnsupportedImage (415), InvalidImage (422) or ImageTooLarge (413).
    """
    # RGB pixels are signature.generate's fast path (same signature as the grey image).
    pixels = image.load_rgb(data, max_pixels=int(settings["MATCH_MAX_PIXELS"]),
                            exif_transpose=bool(settings["MATCH_EXIF_TRANSPOSE"]),
                            max_side=int(settings.get("MATCH_MAX_IMAGE_SIDE", 0)),
                            formats=tuple(settings.get("MATCH_IMAGE_FORMATS", image.FORMATS)))
    if all_orientations:
        signatures = np.asarray(signature.generate_all(pixels), dtype=np.int8)
    else:
        signatures = np.asarray(signature.generate(pixels), dtype=np.int8)[np.newaxis, :]
    found = None
    if features == "stored":
        found = local_features.extract(pixels)
    elif features == "query":
        found = local_features.extract_query(pixels)
    elif features is not None:
        raise ValueError(f"features must be None, 'stored' or 'query', got {features!r}")
    return SignedImage(signatures, hashlib.sha256(data).hexdigest(), found)


def sign_file(path: str | Path, settings: Mapping[str, Any]) -> SignedImage:
    """Read and :func:`sign` one file (the CLI's unit of parallel work).

    Raises OSError when the file can't be read, besides what :func:`sign` raises.
    """
    path = Path(path)
    size = path.stat().st_size
    limit = int(settings["MATCH_MAX_UPLOAD_BYTES"])
    if size > limit:
        raise PayloadTooLarge(f"{size} bytes is over MATCH_MAX_UPLOAD_BYTES ({limit})")
    data = path.read_bytes()
    signed = sign(data, settings, features="stored" if local_features_on(settings) else None)
    if settings.get("MATCH_THUMBNAILS"):
        # In the signing process, so bulk adds make thumbnails in parallel too; a
        # thumbnail is named by content, so one left by a failed write is harmless.
        from match.web import thumbs

        thumbs.save(settings, data, signed.sha256)
    return signed


def check_filepath(filepath: Any, field: str = "filepath") -> str:
    """Return ``filepath`` if a store accepts it; BadRequest says why it doesn't."""
    if filepath is None or filepath == "":
        raise MissingField(field, "the name under which the image is stored, e.g. a URL or a path")
    if not isinstance(filepath, str):
        raise BadRequest(f"{field} must be a string")
    if len(filepath) > MAX_FILEPATH_LENGTH:
        raise BadRequest(f"{field} is {len(filepath)} characters; the limit is {MAX_FILEPATH_LENGTH}")
    if "\x00" in filepath:
        raise BadRequest(f"{field} must not contain NUL characters")
    _check_utf8(filepath, field)
    return filepath


def metadata_limit(settings: Mapping[str, Any]) -> int | None:
    """``MATCH_MAX_METADATA_BYTES`` (None when ``settings`` don't say, as in bare library use)."""
    value = settings.get("MATCH_MAX_METADATA_BYTES")
    return None if value is None else int(value)


def parse_metadata(raw: Any, field: str = "metadata", *, max_bytes: int | None = None) -> dict[str, Any]:
    """Parse the ``metadata`` field: a JSON object given as text (or, from JSON, an object).

    ``None`` or an empty string means no metadata. NaN and Infinity are refused,
    as JSON does not have them. ``max_bytes`` caps its compact UTF-8 JSON size.
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"{field} is not valid JSON ({exc}); send a JSON object, "
                             'e.g. {"source": "camera"}') from exc
    else:
        value = raw
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be a JSON object, e.g. {{\"source\": \"camera\"}}; "
                         f"got a JSON {_json_type(value)}")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"{field} must be plain JSON ({exc})") from exc
    _check_utf8(text, field)
    size = len(text.encode("utf-8"))
    if max_bytes is not None and size > max_bytes:
        raise BadRequest(f"{field} is {size} bytes of JSON; the limit is {max_bytes} bytes "
                         "(MATCH_MAX_METADATA_BYTES)")
    return value


def make_record(filepath: str, signed: SignedImage, metadata: Mapping[str, Any] | None = None) -> Record:
    """The record :func:`add` stores: the metadata gains ``sha256`` (the server's value wins)."""
    meta = dict(metadata or {})
    meta[SHA256_KEY] = signed.sha256
    return Record(filepath=filepath, signature=signed.signature, metadata=meta, sha256=signed.sha256,
                  features=signed.features)


def add(store: SignatureStore, settings: Mapping[str, Any], *, filepath: str, data: bytes,
        metadata: Mapping[str, Any] | None = None) -> Record:
    """Sign ``data`` and store it under ``filepath``, replacing any record there.

    Everything is checked before the single upsert, so nothing is stored on failure.
    """
    filepath = check_filepath(filepath)
    meta = parse_metadata(dict(metadata) if metadata is not None else None,
                          max_bytes=metadata_limit(settings))
    signed = sign(data, settings, features="stored" if local_features_on(settings) else None)
    record = make_record(filepath, signed, meta)
    store.upsert(record)
    if settings.get("MATCH_THUMBNAILS"):
        # The web UI's thumbnail (docs/web.md); it never fails an add that was stored.
        from match.web import thumbs

        thumbs.save(settings, data, record.sha256)
        thumbs.claim(settings, record.sha256, record.filepath)
    return record


def delete(store: SignatureStore, filepath: str, settings: Mapping[str, Any] | None = None) -> None:
    """Remove the record of ``filepath``; NotFound (404) if there is none.

    With ``settings``, its web UI thumbnail goes too (docs/web.md).
    """
    filepath = check_filepath(filepath)
    thumbnails = settings is not None and bool(settings.get("MATCH_THUMBNAILS"))
    record = store.get(filepath) if thumbnails else None  # its sha256 names the thumbnail
    if (thumbnails and record is None) or not store.delete(filepath):
        raise NotFound(f"no image is stored under filepath {filepath!r}")
    if record is not None and settings is not None:  # thumbnails were on
        from match.web import thumbs

        thumbs.remove(settings, record.sha256 or record.metadata.get(SHA256_KEY), record.filepath)


def search(store: SignatureStore, settings: Mapping[str, Any], data: bytes, *,
           all_orientations: bool = True, limit: int | None = None,
           cutoff: float | None = None) -> list[Match]:
    """Stored images that show the image in ``data``, best first (:mod:`match.fusion`).

    With ``all_orientations`` the image is also searched rotated and mirrored (the 8
    signatures of :func:`match.signature.generate_all`); a hit is reported once,
    with its best distance. With local features on (``MATCH_LOCAL_FEATURES``), the
    candidates sharing its visual words and the nearest signatures beyond the sure
    distance are verified geometrically (:func:`match.features.verify`), so a crop, a
    border or a screenshot is found, and a look-alike in the uncertain band is not.
    """
    size = check_limit(limit, settings, default=int(settings["MATCH_SEARCH_LIMIT"]))
    cut = check_cutoff(cutoff, settings)
    if not local_features_on(settings):
        signed = sign(data, settings, all_orientations=all_orientations)
        return store.search(signed.signatures, size=size, cutoff=cut)
    signed = sign(data, settings, all_orientations=all_orientations, features="query")
    return search_signed(store, settings, signed, size=size, cutoff=cut)


def search_signed(store: SignatureStore, settings: Mapping[str, Any], signed: SignedImage, *,
                  size: int, cutoff: float) -> list[Match]:
    """:func:`search` on an image already signed with query features."""
    query = signed.features
    assert query is not None, "search_signed needs the query's features"
    verify_count = int(settings.get("MATCH_VERIFY_CANDIDATES", 20))
    min_inliers = int(settings.get("MATCH_MIN_INLIERS", local_features.MIN_INLIERS))
    sure = min(float(settings.get("MATCH_SURE_DISTANCE", 0.25)), cutoff)
    # The nearest signatures whatever their distance: the sure ones are reported as
    # they are, the others are verified (a 5% crop's original is usually the nearest
    # signature even beyond the cutoff).
    nearest = store.search(signed.signatures, size=size + verify_count, cutoff=1.0)
    words = vocabulary.load().words(query.descriptors) if len(query) else np.zeros(0, np.int32)
    by_words = store.search_words(words, size=verify_count) if len(words) else []
    sure_hits = {hit.filepath for hit in nearest if hit.distance <= sure}
    to_verify = [hit.filepath for hit in nearest if hit.distance > sure][:verify_count + size]
    to_verify += [hit.filepath for hit in by_words if hit.filepath not in sure_hits]
    to_verify = list(dict.fromkeys(to_verify))
    stored = store.get_features(to_verify)
    unverifiable = set(to_verify) - set(stored)
    if unverifiable:
        _log_unverifiable(len(unverifiable), len(to_verify))
    if len(query) < min_inliers:  # a flat or tiny query: only a sure signature matches
        stored = {}
    names = list(stored)
    checks = local_features.verify_many(query, [stored[name] for name in names], min_inliers=min_inliers)
    verified = {name: check for name, check in zip(names, checks, strict=True) if check is not None}
    known = {hit.filepath for hit in nearest}
    distances: dict[str, float] = {}
    metadata: dict[str, Mapping[str, Any]] = {}
    for filepath in verified:
        if filepath not in known:
            record = store.get(filepath)
            if record is not None:
                distances[filepath] = float(signature.distances(signed.signatures,
                                                                record.signature[np.newaxis, :]).min())
                metadata[filepath] = record.metadata
    candidates = [hit for hit in nearest if hit.distance <= cutoff or hit.filepath in verified]
    return fusion.fuse(candidates, verified, distances, metadata, unverifiable=unverifiable,
                       sure=sure, cutoff=cutoff, min_inliers=min_inliers, size=size)


_last_backfill_warning = 0.0


def _log_unverifiable(missing: int, candidates: int) -> None:
    """Say, at most once a minute per process, that the index is partly backfilled."""
    global _last_backfill_warning
    now = time.monotonic()
    if now - _last_backfill_warning >= 60.0:
        _last_backfill_warning = now
        log.warning("search: %d of %d candidates have no local features yet; they are judged by "
                    "signature alone until `match reindex` gives them features", missing, candidates)


def compare(settings: Mapping[str, Any], data1: bytes, data2: bytes) -> Comparison:
    """Distance between two images' signatures (as given, no orientations), and, with
    local features on, the verification of the first against the second."""
    on = local_features_on(settings)
    first = sign(data1, settings, features="query" if on else None)
    second = sign(data2, settings, features="stored" if on else None)
    check = None
    if first.features is not None and second.features is not None:
        check = local_features.verify(first.features, second.features,
                                      min_inliers=int(settings.get("MATCH_MIN_INLIERS",
                                                                   local_features.MIN_INLIERS)))
    return Comparison(float(signature.distance(first.signature, second.signature)),
                      None if check is None else check.inliers,
                      None if check is None else check.region)


def hit_json(match: Match) -> dict[str, Any]:
    """One /search hit: dsys/match's ``score``, ``filepath``, ``metadata``, then the evidence.

    ``distance`` (signature), ``found_by``, and ``inliers`` / ``region`` (the box of the
    stored image, ``[x0, y0, x1, y1]`` in its pixels, that the query shows) when local
    features confirmed the hit.
    """
    hit: dict[str, Any] = {"score": match.score, "filepath": match.filepath,
                           "metadata": dict(match.metadata), "distance": match.distance,
                           "found_by": list(match.found_by)}
    if match.inliers is not None:
        hit["inliers"] = match.inliers
        hit["region"] = None if match.region is None else list(match.region)
    return hit


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """The /compare result: ``score`` and ``distance`` (signature), ``inliers`` and
    ``region`` (of the second image that the first shows; null when not confirmed)."""
    return {"score": comparison.score, "distance": comparison.distance, "inliers": comparison.inliers,
            "region": None if comparison.region is None else list(comparison.region)}


def count(store: SignatureStore) -> int:
    """Number of stored images."""
    return store.count()


def list_filepaths(store: SignatureStore, settings: Mapping[str, Any], *, offset: int | None = None,
                   limit: int | None = None) -> list[str]:
    """Stored filepaths in ascending order, a page at a time (limit defaults to 20)."""
    return store.list(check_offset(offset), check_limit(limit, settings, default=20))


# --- validation shared by HTTP and CLI ---------------------------------------------


def check_limit(limit: int | None, settings: Mapping[str, Any], *, default: int,
                field: str = "limit") -> int:
    """``limit`` or ``default``; 1 <= limit <= MATCH_MAX_SEARCH_LIMIT, else BadRequest."""
    maximum = int(settings["MATCH_MAX_SEARCH_LIMIT"])
    if limit is None:
        return min(default, maximum)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise BadRequest(f"{field} must be an integer from 1 to {maximum}, got {limit!r}")
    return limit


def check_offset(offset: int | None, field: str = "offset") -> int:
    """``offset`` or 0; a non-negative integer, else BadRequest."""
    if offset is None:
        return 0
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(f"{field} must be an integer from 0 to {MAX_OFFSET}, got {offset!r}")
    return offset


def check_cutoff(cutoff: float | None, settings: Mapping[str, Any], field: str = "cutoff") -> float:
    """``cutoff`` or MATCH_CUTOFF; a number in [0, 1], else BadRequest."""
    if cutoff is None:
        return float(settings["MATCH_CUTOFF"])
    if (isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not math.isfinite(cutoff)
            or not 0.0 <= cutoff <= 1.0):
        raise BadRequest(f"{field} must be a number from 0 to 1 (a signature distance), got {cutoff!r}")
    return float(cutoff)


def _check_utf8(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{field} is not valid Unicode text (lone surrogate)") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__
