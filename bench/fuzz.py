"""Fuzz the running server against its own OpenAPI description (schemathesis).

Starts ``match serve`` (gunicorn, 4 workers, embedded store unless --store) on a
loopback port, loads ``/openapi.json`` from it, and for every operation sends
schemathesis-generated requests: valid ones (positive mode) and invalid ones (negative
mode), ``--examples`` of each per operation. Every response is checked: no 5xx, and
conformance to the spec (documented status, content type, headers, the envelope
schema); invalid requests must be refused with a 4xx, and methods the spec does not
list must be 405 (``--no-strict`` drops these two). Prints the figures and exits 1 on any 5xx or violation::

    python bench/fuzz.py                     # >= 5,000 requests (13 operations x 2 modes x 200)
    python bench/fuzz.py --examples 20       # quick
    python bench/fuzz.py --url http://127.0.0.1:8000   # a server you started yourself
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hypothesis  # noqa: E402
import requests  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck, Phase  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from bench.serving import serve  # noqa: E402

#: What counts as a spec violation (besides a 5xx, counted on its own).
CONFORMANCE_CHECKS: list[Callable[..., Any]] = [
    status_code_conformance, content_type_conformance, response_headers_conformance,
    response_schema_conformance]

#: Unless --no-strict, also: invalid requests must be refused (4xx), and undocumented
#: methods must be 405 with an Allow header.
STRICT_CHECKS: list[Callable[..., Any]] = [negative_data_rejection, unsupported_method]


@dataclass
class Figures:
    """What a fuzz run found."""

    requests: int = 0
    server_errors: int = 0
    violations: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    by_operation: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)

    def record(self, label: str, case: Any, response: requests.Response, problem: str) -> None:
        if len(self.examples) < 20:
            body = response.text[:300].replace("\n", " ")
            sent = response.request.body if response.request is not None else b""
            sent_text = (sent[:200] if isinstance(sent, bytes) else str(sent or "")[:200].encode())
            kind = response.request.headers.get("Content-Type", "") if response.request is not None else ""
            self.examples.append(f"{label} {case.method} {case.path} -> {response.status_code}: {problem} "
                                 f"[sent {kind}: {sent_text!r}] [got {body}]")

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "5xx": self.server_errors, "spec_violations": self.violations,
                "by_status": dict(sorted(self.by_status.items())), "examples": self.examples}


def fuzz(url: str, examples: int, seed: int = 0, strict: bool = True) -> Figures:
    """Send ``examples`` positive and ``examples`` negative cases per operation to ``url``."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    figures = Figures()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CONFORMANCE_CHECKS + (STRICT_CHECKS if strict else [])
            _fuzz_operation(url, operation, mode, examples, seed, session, figures, checks)
    return figures


def _fuzz_operation(url: str, operation: Any, mode: GenerationMode, examples: int, seed: int,
                    session: requests.Session, figures: Figures, checks: list[Callable[..., Any]]) -> None:
    """Send up to ``examples`` cases of one operation in one mode, counting into ``figures``."""
    label = f"{operation.method.upper()} {operation.path} [{mode.value}]"

    @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=seed == 0,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        figures.requests += 1
        figures.by_operation[label] += 1
        try:
            response = case.call(base_url=url, session=session, timeout=60)
        except requests.RequestException as exc:
            figures.server_errors += 1
            figures.examples.append(f"{label} {case.method} {case.path}: no response ({exc})")
            return
        figures.by_status[response.status_code] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - Failure or FailureGroup
            figures.server_errors += 1
            figures.record(label, case, response, f"5xx: {str(exc).splitlines()[0]}")
        try:
            case.validate_response(response, checks=checks)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
            figures.violations += 1
            lines = [line.strip() for line in str(exc).split("\n") if line.strip()]
            figures.record(label, case, response, " | ".join(lines[:8]))

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to make invalid (e.g. GET /count has no parameters): no negative cases.
        figures.unsatisfiable.append(label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="cases per operation and mode (200)")
    parser.add_argument("--store", choices=["local", "elasticsearch"], default="local")
    parser.add_argument("--es-url", default="http://127.0.0.1:9200")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--url", help="fuzz this running server instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--no-strict", dest="strict", action="store_false",
                        help="skip the checks that invalid requests are refused (4xx) and that "
                             "undocumented methods are 405")
    args = parser.parse_args()
    started = time.monotonic()
    if args.url:
        figures = fuzz(args.url.rstrip("/"), args.examples, strict=args.strict)
    else:
        with serve(args.store, workers=args.workers, es_url=args.es_url) as server:
            figures = fuzz(server.url, args.examples, strict=args.strict)
            log = server.log_text()
        if "Traceback" in log:
            print("server log has a traceback:\n" + log[-3000:], file=sys.stderr)
            figures.server_errors += 0 if figures.server_errors else 1
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({**figures.as_dict(), "seconds": round(elapsed, 1)}, indent=2))
    else:
        print(f"requests tried: {figures.requests} in {elapsed:.0f} s")
        print(f"5xx: {figures.server_errors}")
        print(f"spec violations: {figures.violations}")
        print("by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(figures.by_status.items())))
        for example in figures.examples:
            print("  " + example)
    return 1 if figures.server_errors or figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
