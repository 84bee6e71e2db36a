"""The one door to AWS: a boto3 MTurk client (and S3, for kept images), errors translated.

This is the only module that imports boto3 or botocore. :class:`Turk` is one client
pointed at the configured endpoint (``MATCH_CROWD_ENDPOINT``):

* ``sandbox`` (the default) — MTurk's requester sandbox, where nothing is paid;
* ``production`` — MTurk itself (closed to new customers since 2026);
* a URL — match's own crowd server (``match crowd server``) or any MTurk-compatible
  endpoint. One code path for all three.

Every call goes through :meth:`Turk.call`, which turns botocore's errors into match's
at this boundary (``raise ... from exc``): a refusal by the endpoint becomes
:class:`~match.errors.TurkRequestError` carrying MTurk's ``TurkErrorCode``; an
unreachable endpoint or missing credentials becomes :class:`~match.errors.CrowdError`.
Credentials come from boto3's usual chain (environment, profile, role), never from
match's settings.

Answers arrive as ``QuestionFormAnswers`` XML; :func:`parse_answer` reads them with
xmltodict, forcing ``Answer`` to a list so a one-field form parses like a two-field one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore
import botocore.config
import botocore.exceptions
import xmltodict

from match.errors import CrowdError, TurkRequestError

__all__ = ["ENDPOINTS", "Turk", "parse_answer", "endpoint_url", "S3Media"]

ENDPOINTS = {
    "sandbox": "https://mturk-requester-sandbox.us-east-1.amazonaws.com",
    "production": "https://mturk-requester.us-east-1.amazonaws.com",
}

#: TurkErrorCodes that mean "this request token was already processed".
DUPLICATE_CODES = frozenset({"AWS.MechanicalTurk.HitAlreadyExists", "AWS.MechanicalTurk.DuplicateRequest"})
_HIT_ID_IN_MESSAGE = re.compile(r'HIT with ID "?([A-Z0-9]{20,40})"?')


def endpoint_url(endpoint: str) -> str:
    """The URL of ``sandbox``, ``production`` or a URL; ValueError for anything else."""
    if endpoint in ENDPOINTS:
        return ENDPOINTS[endpoint]
    if endpoint.startswith(("http://", "https://")):
        return endpoint
    raise ValueError(f"crowd endpoint must be sandbox, production or an http(s) URL; got {endpoint!r}")


def parse_answer(xml: str) -> dict[str, str]:
    """``QuestionFormAnswers`` XML -> ``{QuestionIdentifier: FreeText}``.

    ``Answer`` is forced to a list (xmltodict otherwise returns a dict for one answer);
    answers without FreeText (file uploads, selections) map to "". Malformed XML raises
    :class:`~match.errors.CrowdError`.
    """
    try:
        document = xmltodict.parse(xml, force_list=("Answer",), process_namespaces=False)
    except Exception as exc:  # expat errors have no common public base class
        raise CrowdError(f"unreadable QuestionFormAnswers: {exc}") from exc
    root = document.get("QuestionFormAnswers") or {}
    fields: dict[str, str] = {}
    for answer in root.get("Answer") or []:
        if not isinstance(answer, Mapping):
            continue
        name = answer.get("QuestionIdentifier")
        if not name:
            continue
        text = answer.get("FreeText")
        fields[str(name)] = "" if text is None else str(text)
    return fields


class Turk:
    """A boto3 MTurk client for one endpoint, with match's error translation.

    Example::

        turk = Turk("http://127.0.0.1:8001/")
        turk.call("GetAccountBalance")["AvailableBalance"]
    """

    def __init__(
        self,
        endpoint: str = "sandbox",
        *,
        region: str = "us-east-1",
        timeout: float = 20.0,
        client: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.url = endpoint_url(endpoint)
        self.production = self.url == ENDPOINTS["production"]
        if client is None:
            try:
                client = boto3.client(
                    "mturk",
                    endpoint_url=self.url,
                    region_name=region,
                    config=botocore.config.Config(
                        connect_timeout=timeout,
                        read_timeout=timeout,
                        retries={"max_attempts": 3, "mode": "standard"},
                    ),
                )
            except botocore.exceptions.BotoCoreError as exc:
                raise CrowdError(f"cannot build the MTurk client: {exc}") from exc
        self.client = client

    def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call an MTurk operation by its API name (``CreateHIT``), translating errors."""
        method = getattr(self.client, _snake(operation))
        try:
            response = method(**params)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = exc.response.get("TurkErrorCode") or error.get("TurkErrorCode") or error.get("Code", "")
            message = error.get("Message") or str(exc)
            failure = TurkRequestError(f"{operation}: {message}")
            failure.code = str(code)  # type: ignore[attr-defined]
            raise failure from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise CrowdError(
                "no AWS credentials for the crowd endpoint (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a profile)"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise CrowdError(f"{operation}: the crowd endpoint {self.url} did not answer: {exc}") from exc
        response.pop("ResponseMetadata", None)
        return dict(response)

    def pages(self, operation: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list operation (``NextToken``), page after page."""
        token: str | None = None
        while True:
            page = self.call(operation, **params, **({"NextToken": token} if token else {}))
            yield from page.get(key, [])
            token = page.get("NextToken")
            if not token or not page.get(key):
                return

    # --- the operations match uses, with their shapes -------------------------------

    def balance(self) -> int:
        """AvailableBalance in cents."""
        from match.crowd.tasks import cents

        return cents(self.call("GetAccountBalance")["AvailableBalance"])

    def create_hit_type(self, **params: Any) -> str:
        """CreateHITType -> HITTypeId (the same parameters give the same id)."""
        return str(self.call("CreateHITType", **params)["HITTypeId"])

    def create_hit(self, **params: Any) -> dict[str, Any]:
        """CreateHITWithHITType -> the HIT dict."""
        return dict(self.call("CreateHITWithHITType", **params)["HIT"])

    def get_hit(self, hit_id: str) -> dict[str, Any]:
        """GetHIT -> the HIT dict."""
        return dict(self.call("GetHIT", HITId=hit_id)["HIT"])

    def list_hits(self) -> Iterator[dict[str, Any]]:
        """ListHITs, every page."""
        return self.pages("ListHITs", "HITs", MaxResults=100)

    def assignments(self, hit_id: str) -> list[dict[str, Any]]:
        """ListAssignmentsForHIT, every page, every status."""
        return list(
            self.pages(
                "ListAssignmentsForHIT",
                "Assignments",
                HITId=hit_id,
                MaxResults=100,
                AssignmentStatuses=["Submitted", "Approved", "Rejected"],
            )
        )

    def bonus_payments(self, assignment_id: str) -> list[dict[str, Any]]:
        """ListBonusPayments of one assignment."""
        return list(
            self.pages("ListBonusPayments", "BonusPayments", AssignmentId=assignment_id, MaxResults=100)
        )

    def notify(self, worker_ids: Sequence[str], subject: str, message: str) -> list[dict[str, Any]]:
        """NotifyWorkers in batches of at most 100; returns the failure statuses."""
        failures: list[dict[str, Any]] = []
        ids = list(dict.fromkeys(worker_ids))
        for start in range(0, len(ids), 100):
            response = self.call(
                "NotifyWorkers",
                Subject=subject[:200],
                MessageText=message[:4096],
                WorkerIds=ids[start : start + 100],
            )
            failures += response.get("NotifyWorkersFailureStatuses", [])
        return failures

    def expire_hit(self, hit_id: str) -> None:
        """UpdateExpirationForHIT to now (no new workers can accept it)."""
        self.call("UpdateExpirationForHIT", HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))


def _snake(operation: str) -> str:
    """``CreateHITWithHITType`` -> ``create_hit_with_hit_type`` (botocore's method names)."""
    return str(botocore.xform_name(operation))


def duplicate_hit_id(error: TurkRequestError) -> str | None:
    """The existing HITId named by a HitAlreadyExists error, if the message names one."""
    found = _HIT_ID_IN_MESSAGE.search(error.message)
    return found.group(1) if found else None


def is_duplicate(error: TurkRequestError) -> bool:
    """Whether the endpoint refused a request because its UniqueRequestToken was used."""
    code = getattr(error, "code", "")
    return code in DUPLICATE_CODES or "UniqueRequestToken" in error.message or "idempotency" in error.message


class S3Media:
    """Kept images in an S3 bucket, handed out as presigned (expiring) GET URLs."""

    def __init__(self, bucket: str, *, region: str | None = None, prefix: str = "match-crowd/") -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = boto3.client("s3", region_name=region)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Upload (private) under ``prefix + key``."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise CrowdError(f"cannot store an image in s3://{self.bucket}: {exc}") from exc

    def url(self, key: str, expires_in: int) -> str:
        """A presigned GET URL valid ``expires_in`` seconds (at most 7 days with SigV4)."""
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self.prefix + key},
                    ExpiresIn=min(int(expires_in), 7 * 24 * 3600),
                )
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise CrowdError(f"cannot sign an S3 URL: {exc}") from exc
