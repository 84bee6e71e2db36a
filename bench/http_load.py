"""HTTP throughput and worker memory: /search and /compare under gunicorn.

Not a test (tests/test_bench_smoke.py only runs ``--smoke``)::

    apt-get install wrk                 # the load generator (else a Python one is used)
    python -m bench.http_load [--records 100000] [--seconds 20] [--connections 8]

It fills an embedded store (``MATCH_STORE=local``) with ``--records`` signatures of
the scale corpus (:func:`bench.common.scale_signatures`), starts ``match serve``
(gunicorn, 2 x cores sync workers) on it, and drives it from loopback with wrk
(``-t2 -c<connections>``, a Lua script posting a fixed multipart body) for each
scenario:

* ``/search`` (all 8 orientations, the default) with a 1155x866 JPEG (~1 MP),
* ``/search all_orientations=false`` with the same JPEG,
* ``/compare`` of two such JPEGs.

It prints requests/s, latency p50/p99 and errors (connect/read/write/timeout and
non-2xx responses) per scenario, and the resident memory (RSS) of each gunicorn
worker: idle (before the first search loads the store's cache), and after the
searches. The load generator runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench import common, serving
from match.store import Record
from match.store.local import LocalStore

LUA = """
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def fill_store(directory: Path, records: int) -> None:
    """An embedded store of ``records`` scale-corpus signatures in ``directory``."""
    signatures = np.asarray(common.scale_signatures(records))
    store = LocalStore(directory / "match.sqlite3")
    for start in range(0, records, 10_000):
        store.upsert_many(Record(f"img/{i:07d}.jpg", signatures[i], {"n": i})
                          for i in range(start, min(records, start + 10_000)))
    store.close()


def wrk(url: str, body: bytes, content_type: str, seconds: int, connections: int,
        work: Path) -> dict[str, Any]:
    """Run wrk against ``url``; its summary as a dict."""
    (work / "post.lua").write_text(LUA)
    (work / "body.bin").write_bytes(body)
    env = {**os.environ, "WRK_BODY": str(work / "body.bin"), "WRK_CONTENT_TYPE": content_type}
    output = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
                             "-s", str(work / "post.lua"), url], env=env, capture_output=True,
                            text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRKJSON "))
    result: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[key] for key in ("connect", "read", "write", "status", "timeout"))
    return result


def python_load(url: str, body: bytes, content_type: str, seconds: int, connections: int) -> dict[str, Any]:
    """A small threaded load generator, when wrk is not installed."""
    latencies: list[float] = []
    errors = [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def loop() -> None:
        session = requests.Session()
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                ok = session.post(url, data=body, headers={"Content-Type": content_type},
                                  timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append((time.perf_counter() - started) * 1e6)
                errors[0] += not ok

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - started
    return {"requests": len(latencies), "rps": len(latencies) / duration, "errors": errors[0],
            "p50_us": common.percentile(latencies, 50), "p99_us": common.percentile(latencies, 99)}


def rss_mb(server: serving.Server) -> list[float]:
    """RSS of each gunicorn worker, MB."""
    return [common.rss_bytes(pid) / 1e6 for pid in serving.worker_pids(server.process.pid)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator")
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.records, args.seconds, args.connections = 500, 2, 2
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.1f}; "
          f"load generator: {'wrk' if use_wrk else 'python'}")
    jpegs = sorted(common.jpeg_corpus(20).glob("*.jpg"))
    image1, image2 = jpegs[3].read_bytes(), jpegs[4].read_bytes()
    scenarios = {
        "/search (8 orientations)": ("/search", {}, {"image": ("q.jpg", image1)}),
        "/search all_orientations=false": ("/search", {"all_orientations": "false"},
                                           {"image": ("q.jpg", image1)}),
        "/compare": ("/compare", {}, {"image1": ("a.jpg", image1), "image2": ("b.jpg", image2)}),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="match-bench-http-") as name:
        work = Path(name)
        fill_store(work, args.records)
        file_bytes = sum(path.stat().st_size for path in work.glob("match.sqlite3*"))
        env = {"MATCH_STORE": "local", "MATCH_DATA_DIR": str(work)}
        workers = 2 * (os.cpu_count() or 1)
        with serving.run({**env, "MATCH_ACCESS_LOG": "false"}, directory=work, workers=workers) as server:
            time.sleep(1)
            idle = rss_mb(server)
            for label, (path, fields, files) in scenarios.items():
                body, content_type = common.multipart(fields, files)
                check = requests.post(server.url + path, data=body, headers={"Content-Type": content_type},
                                      timeout=60)
                check.raise_for_status()
                if use_wrk:
                    result = wrk(server.url + path, body, content_type, args.seconds, args.connections, work)
                else:
                    result = python_load(server.url + path, body, content_type, args.seconds,
                                         args.connections)
                rows.append([label, result["rps"], result["p50_us"] / 1000, result["p99_us"] / 1000,
                             result["requests"], result["errors"]])
                print(f"  {label}: {result['rps']:.1f} requests/s, {result['errors']} errors", flush=True)
            busy = rss_mb(server)
    print(f"\n{workers} gunicorn workers, {args.connections} connections, "
          f"{args.seconds} s per scenario, "
          f"embedded store of {args.records:,} records ({file_bytes / args.records:,.0f} file bytes/record)")
    print(common.table(rows, ["scenario", "requests/s", "p50 ms", "p99 ms", "requests", "errors"]))
    print(f"\nworker RSS idle: {', '.join(f'{mb:.0f}' for mb in idle)} MB; after the searches: "
          f"{', '.join(f'{mb:.0f}' for mb in busy)} MB "
          f"(+{(np.mean(busy) - np.mean(idle)) * 1e6 / args.records:,.0f} bytes/record per worker)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
