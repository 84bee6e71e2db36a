"""Mixed load on a running ``match serve``: N concurrent clients add, search and delete
for a while, then the store is checked against what the server acknowledged.

Each client loops: add (50 %) a small generated JPEG under a filepath of its own,
search (30 %) one of the images, delete (20 %) one of *its* acknowledged adds. Every
request is a fresh connection (gunicorn spreads them over its workers). An error is
any answer other than 200 (or no answer). At the end the server's count must equal
acknowledged adds minus acknowledged deletes, and /list must hold exactly those
filepaths: "lost adds" are acknowledged adds missing from it, "ghosts" are entries
that should not be there. ::

    python bench/load.py                               # 32 clients, 60 s, both stores
    python bench/load.py --store local --seconds 10    # the CI version's size
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
from PIL import Image  # noqa: E402

from bench.serving import Server, serve  # noqa: E402

__all__ = ["Result", "images", "run_load", "listed"]


def images(count: int = 24, seed: int = 7) -> list[bytes]:
    """``count`` distinct small JPEGs (Mandelbrot crops), 160 x 120."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        x, y = rng.uniform(-2.0, 0.2), rng.uniform(-1.2, 0.6)
        size = rng.uniform(0.3, 1.2)
        image = Image.effect_mandelbrot((160, 120), (x, y, x + size, y + size * 0.75), 80).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


@dataclass
class Result:
    """What a load run did and found."""

    requests: int = 0
    errors: int = 0
    adds: int = 0
    deletes: int = 0
    searches: int = 0
    expected: set[str] = field(default_factory=set)
    count: int = -1
    lost: int = 0
    ghosts: int = 0
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "adds_acknowledged": self.adds,
                "deletes_acknowledged": self.deletes, "searches": self.searches,
                "expected_count": len(self.expected), "count": self.count, "lost_adds": self.lost,
                "ghosts": self.ghosts, "seconds": round(self.seconds, 1),
                "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0,
                "error_examples": self.error_examples[:10]}


def listed(url: str, prefix: str = "load/") -> set[str]:
    """Every stored filepath starting with ``prefix`` (paging through /list)."""
    found: set[str] = set()
    offset = 0
    while True:
        response = requests.get(f"{url}/list", params={"offset": offset, "limit": 1000}, timeout=60)
        page = response.json()["result"]
        found.update(path for path in page if path.startswith(prefix))
        if len(page) < 1000:
            return found
        offset += 1000


def _client(url: str, number: int, deadline: float, corpus: list[bytes], result: Result,
            headers: dict[str, str]) -> None:
    rng = random.Random(number)
    mine: list[str] = []
    made = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        try:
            if roll < 0.5 or not mine:
                filepath = f"load/{number}/{made}"
                made += 1
                response = requests.post(f"{url}/add", data={"filepath": filepath},
                                         files={"image": ("a.jpg", rng.choice(corpus), "image/jpeg")},
                                         headers=headers, timeout=60)
                kind = "add"
            elif roll < 0.8:
                response = requests.post(f"{url}/search", files={"image": ("q.jpg", rng.choice(corpus))},
                                         data={"all_orientations": "false", "limit": "5"}, headers=headers,
                                         timeout=60)
                kind = "search"
            else:
                filepath = mine.pop(rng.randrange(len(mine)))
                response = requests.delete(f"{url}/delete", params={"filepath": filepath}, headers=headers,
                                           timeout=60)
                kind = "delete"
        except requests.RequestException as exc:
            with result.lock:
                result.requests += 1
                result.errors += 1
                result.error_examples.append(f"client {number}: {type(exc).__name__}: {exc}")
            continue
        with result.lock:
            result.requests += 1
            if response.status_code != 200:
                result.errors += 1
                result.error_examples.append(f"{kind} -> {response.status_code}: {response.text[:200]}")
                continue
            if kind == "add":
                result.adds += 1
                result.expected.add(filepath)
                mine.append(filepath)
            elif kind == "delete":
                result.deletes += 1
                result.expected.discard(filepath)
            else:
                result.searches += 1


def run_load(server: Server | str, *, clients: int = 32, seconds: float = 60.0,
             headers: dict[str, str] | None = None) -> Result:
    """Run the mixed load against ``server`` (a Server or a base URL) and check the store."""
    url = server if isinstance(server, str) else server.url
    corpus = images()
    result = Result()
    started = time.monotonic()
    deadline = started + seconds
    threads = [threading.Thread(target=_client, args=(url, n, deadline, corpus, result, headers or {}))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    result.count = int(requests.get(f"{url}/count", headers=headers or {}, timeout=60).json()["result"][0])
    stored = listed(url)
    result.lost = len(result.expected - stored)
    result.ghosts = len(stored - result.expected)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["local", "elasticsearch", "both"], default="both")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--es-url", default="http://127.0.0.1:9200")
    args = parser.parse_args()
    stores = ["local", "elasticsearch"] if args.store == "both" else [args.store]
    failed = False
    for store in stores:
        with serve(store, workers=args.workers, es_url=args.es_url) as server:
            result = run_load(server, clients=args.clients, seconds=args.seconds)
        figures = result.as_dict()
        print(json.dumps({"store": store, "clients": args.clients, **figures}))
        failed |= bool(result.errors or result.lost or result.ghosts or result.count != len(result.expected))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
