"""Reading request fields, strictly, whatever way the client sent them.

dsys/match clients send ``application/x-www-form-urlencoded`` or ``multipart/form-data``
(``curl -d`` / ``curl -F``); GET endpoints take the query string. As an extension, a
JSON object body (``Content-Type: application/json``) carries the same fields, with
``metadata`` as an object and ``image`` as base64 text.

Every accessor raises :class:`match.errors.BadRequest` with the field's name and what
it accepts, so views never see a malformed value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from flask import Request
from werkzeug.datastructures import FileStorage

from match.config import parse_bool
from match.errors import BadRequest
from match.fetch import Fetcher

__all__ = ["Fields"]

_INTEGER = re.compile(r"[+-]?\d{1,18}")

#: Longest ``url`` accepted (characters).
MAX_URL_LENGTH = 8192


class Fields:
    """The fields of one request: form and query string, or a JSON object body.

    >>> fields = Fields.from_request(request)          # doctest: +SKIP
    >>> fields.integer("limit")                        # None when absent  # doctest: +SKIP
    """

    def __init__(self, values: Mapping[str, Any], files: Mapping[str, FileStorage], *,
                 is_json: bool = False) -> None:
        self._values = values
        self._files = files
        self._is_json = is_json

    @classmethod
    def from_request(cls, request: Request) -> Fields:
        """Collect the fields of ``request`` (parsing the body may raise 400 or 413)."""
        if request.is_json:
            body = request.get_data(cache=True)
            if not body.strip():
                return cls({}, {}, is_json=True)
            try:
                # Parsed here rather than by request.get_json, which lets RecursionError
                # (deeply nested arrays) escape as a 500.
                data = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise BadRequest("the body is not valid JSON; send a JSON object of fields "
                                 "or use form fields instead") from exc
            if not isinstance(data, dict):
                raise BadRequest("a JSON body must be an object of fields, e.g. "
                                 '{"url": "https://...", "filepath": "..."}')
            return cls(data, {}, is_json=True)
        # request.values is the query string plus (for non-GET) the form body.
        fields = cls(request.values.to_dict(flat=True), request.files.to_dict(flat=True))
        if (request.mimetype == "multipart/form-data" and not request.form and not request.files
                and request.content_length):
            # werkzeug drops parts it cannot read (no Content-Disposition, a bad boundary):
            # a body that is all such parts is malformed, not empty.
            raise BadRequest("the multipart/form-data body has no readable field; check its boundary "
                             "and each part's Content-Disposition")
        return fields

    def raw(self, name: str) -> Any:
        """The value as sent (a string from a form; any JSON value from JSON), or None."""
        return self._values.get(name)

    def text(self, name: str) -> str | None:
        """A text field, or None when absent."""
        value = self._values.get(name)
        if value is None or isinstance(value, str):
            return value
        raise BadRequest(f"{name} must be a string, got {value!r}")

    def boolean(self, name: str, default: bool) -> bool:
        """A boolean: true/false, 1/0, yes/no, on/off (any case); else 400."""
        value = self._values.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return parse_bool(value)
            except ValueError:
                pass
        raise BadRequest(f"{name} must be a boolean (true/false, 1/0, yes/no), got {value!r}")

    def integer(self, name: str) -> int | None:
        """An integer written in decimal digits, or None when absent (an empty value is a 400)."""
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value)
        raise BadRequest(f"{name} must be an integer, got {value!r}")

    def number(self, name: str) -> float | None:
        """A finite number, or None when absent (an empty value is a 400)."""
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
        else:
            number = math.nan
        if not math.isfinite(number):
            raise BadRequest(f"{name} must be a number, got {value!r}")
        return number

    def image(self, url_field: str, file_field: str, fetcher: Fetcher) -> bytes:
        """The image bytes, from an uploaded file ``file_field`` or fetched from ``url_field``.

        Exactly one of the two must be given; an empty upload is a 400. Fetching may
        raise 400 (refused URL), 413, 502 or 504 (see :mod:`match.fetch`).
        """
        url = self.text(url_field)
        upload = self._files.get(file_field)
        inline = self._values.get(file_field)
        if url and (upload is not None or inline is not None):
            raise BadRequest(f"send either {url_field} or {file_field}, not both")
        if upload is not None:
            data: bytes = upload.read()
            if not data:
                raise BadRequest(f"the uploaded file {file_field!r} is empty")
            return data
        if inline is not None:
            return self._inline_image(file_field, inline)
        if url:
            if len(url) > MAX_URL_LENGTH:
                raise BadRequest(f"{url_field} is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
            return fetcher.fetch(url, field=url_field)
        raise BadRequest(f"missing the image: send {url_field} (an http(s) URL) or upload a file "
                         f"as {file_field} (multipart/form-data, e.g. curl -F {file_field}=@photo.jpg)")

    def _inline_image(self, field: str, value: Any) -> bytes:
        """``image`` given as a value instead of a file: base64 in JSON, refused in forms."""
        if not self._is_json:
            raise BadRequest(f"{field} must be an uploaded file (multipart/form-data, e.g. "
                             f"curl -F {field}=@photo.jpg), not a text field")
        if not isinstance(value, str):
            raise BadRequest(f"{field} must be base64 text in a JSON body")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"{field} is not valid base64") from exc
        if not data:
            raise BadRequest(f"{field} is empty")
        return data
