"""Ingest rate into Elasticsearch: ``match add DIR`` vs one ``/add`` request per image.

Not a test (tests/test_bench_smoke.py only runs ``--smoke``). It needs a running
Elasticsearch and the photo corpus of tests/photos.py::

    python -m bench.ingest --url http://127.0.0.1:9200 [--images 1000]

The images are ``--images`` distinct JPEGs of about 1 megapixel (1155x866, quality
90; :func:`bench.common.jpeg_corpus`: crops of the real photos), written once to the
bench cache. Each contender loads all of them into a fresh index of its own
(``match-bench-ingest-*``, one shard, no replica, deleted at the end); the figure is
images per second of wall time, from the first byte read to the last record
searchable, and the index must then count every image. Contenders:

* ``match add DIR``: the CLI as a user runs it (``python -m match add DIR``: process
  start included), signing in one process per core and bulk-upserting 500 records
  per request.
* ``/add x1 client``: the anchor, TRUEPIC/match's way: a client loop posting one
  multipart ``/add`` per image, in series, to ``match serve`` (gunicorn, 2 x cores
  workers), with the server's default refresh policy ``MATCH_ES_REFRESH=wait_for``
  (an add returns once it is searchable, as TRUEPIC/match's clients rely on).
* ``/add x1 client, refresh=false``: the same with ``MATCH_ES_REFRESH=false`` (what
  image-match does by default: ``refresh_after=False``), to show what the refresh
  wait costs.
* ``/add x4 clients``: four such loops in parallel threads (refresh=wait_for).

The client and the server share the machine's cores, as they would on a laptop.
Besides wall time it reports the CPU seconds per image spent by everything involved
(this process, its children -- the CLI, gunicorn and their workers -- and the
Elasticsearch node when it runs on this machine; use a node of your own so other
clients' work is not counted), and ``2 / that`` as the rate two idle cores would
allow: a figure a shared, busy machine does not inflate as it does wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from elasticsearch import Elasticsearch

from bench import common, serving


def _env(url: str, index: str, **extra: str) -> dict[str, str]:
    return {"ELASTICSEARCH_URL": url, "MATCH_STORE": "elasticsearch", "MATCH_INDEX": index,
            "MATCH_ES_REPLICAS": "0", "MATCH_ES_TIMEOUT": "60", **extra}


def run_cli(url: str, index: str, directory: Path, jobs: int | None = None) -> float:
    """Seconds for ``match add DIR`` (the whole command)."""
    command = [sys.executable, "-m", "match", "add", str(directory)]
    if jobs:
        command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    subprocess.run(command, env={**os.environ, **_env(url, index)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=Path(__file__).resolve().parent.parent)
    return time.perf_counter() - started


def run_http(url: str, index: str, files: list[Path], clients: int, refresh: str) -> float:
    """Seconds for ``clients`` loops posting one /add per image to match serve."""
    with tempfile.TemporaryDirectory(prefix="match-bench-ingest-") as work, \
            serving.run({**_env(url, index, MATCH_ES_REFRESH=refresh), "MATCH_ACCESS_LOG": "false"},
                        directory=Path(work), workers=2 * (os.cpu_count() or 1)) as server:
        # Create the index before timing (the first request would otherwise pay it).
        requests.get(f"{server.url}/count", timeout=60).raise_for_status()

        def post_all(part: list[Path]) -> int:
            session = requests.Session()
            errors = 0
            for path in part:
                response = session.post(f"{server.url}/add", data={"filepath": path.name},
                                        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                                        timeout=120)
                errors += response.status_code != 200
            return errors

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            errors = sum(pool.map(post_all, [files[i::clients] for i in range(clients)]))
        if refresh == "false":  # searchable at the end, like the others
            Elasticsearch(url, request_timeout=60).indices.refresh(index=index)
        seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} /add requests failed")
    return seconds


def _cpu(node: int | None) -> float:
    """CPU seconds so far of this process, its reaped children and the ES node."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.process_time() + children.ru_utime + children.ru_stime
            + (common.cpu_seconds(node) if node else 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9200")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--only", nargs="+", default=None, metavar="CONTENDER",
                        help="run only these contenders: cli, http, http-norefresh, http4")
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 20 images")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images = 20
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.1f}")
    directory = common.jpeg_corpus(args.images)
    files = sorted(directory.glob("*.jpg"))[:args.images]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    print(f"{len(files)} JPEGs of 1155x866 ({megabytes / len(files) * 1000:.0f} kB on average) "
          f"in {directory}")
    client = Elasticsearch(args.url, request_timeout=120)
    node = common.es_pid(args.url)
    contenders = {
        "match add DIR": lambda index: run_cli(args.url, index, directory),
        "/add x1 client": lambda index: run_http(args.url, index, files, 1, "wait_for"),
        "/add x1 client, refresh=false": lambda index: run_http(args.url, index, files, 1, "false"),
        "/add x4 clients": lambda index: run_http(args.url, index, files, 4, "wait_for"),
    }
    keys = dict(zip(("cli", "http", "http-norefresh", "http4"), contenders, strict=True))
    if args.only:
        contenders = {keys[key]: contenders[keys[key]] for key in args.only}
    rates, cpu = {}, {}
    try:
        for number, (name, run) in enumerate(contenders.items()):
            index = f"match-bench-ingest-{number}"
            client.indices.delete(index=index, ignore_unavailable=True)
            cpu_before = _cpu(node)
            seconds = run(index)
            cpu[name] = (_cpu(node) - cpu_before) / len(files)
            client.indices.refresh(index=index)
            count = int(client.count(index=index)["count"])
            if count != len(files):
                raise RuntimeError(f"{name}: the index holds {count} of {len(files)} images")
            rates[name] = len(files) / seconds
            print(f"  {name}: {seconds:.1f} s, {rates[name]:.1f} images/s, "
                  f"{cpu[name] * 1000:.0f} CPU ms/image", flush=True)
    finally:  # by name: clusters may refuse wildcard deletes (action.destructive_requires_name)
        for number in range(4):
            client.indices.delete(index=f"match-bench-ingest-{number}", ignore_unavailable=True)
        client.close()
    anchor, anchor_cpu = rates.get("/add x1 client", float("nan")), cpu.get("/add x1 client", float("nan"))
    print(f"CPU counted: this process, its children{', the Elasticsearch node' if node else ''}")
    print(common.table([[name, rate, rate / anchor, cpu[name] * 1000, 2 / cpu[name], anchor_cpu / cpu[name]]
                        for name, rate in rates.items()],
                       ["contender", "images/s", "vs /add x1 client", "CPU ms/image",
                        "images/s on 2 idle cores (2 / CPU)", "CPU vs /add x1 client"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
