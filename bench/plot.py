"""Draw search cost against index size from the results of es_scale.py and local_store.py.

    python -m bench.plot [--out bench/scale.png]

Reads ``bench/results/es_scale.jsonl`` and ``local_store.jsonl`` (or
``$MATCH_BENCH_RESULTS``), keeps the latest non-smoke run per (backend, contender,
size), and draws p50 latency (left) and CPU per query (right: client + Elasticsearch
node, or the embedded store's process; the figure a busy machine inflates least) against the number of
indexed images, both axes logarithmic. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import common

STYLES = {
    ("elasticsearch", "match 1"): ("match, ES, 1 orientation", "C0", "-o"),
    ("elasticsearch", "match 8"): ("match, ES, 8 orientations", "C0", "--o"),
    ("elasticsearch", "match words 1"): ("match words only, ES, 1", "C2", "-^"),
    ("elasticsearch", "match words 8"): ("match words only, ES, 8", "C2", "--^"),
    ("elasticsearch", "combined 8, kNN 1"): ("proposal: 8 in 2 searches, kNN 1", "C4", ":v"),
    ("elasticsearch", "anchor 1"): ("TRUEPIC/match query, 1 orientation", "C3", "-s"),
    ("elasticsearch", "anchor 8"): ("TRUEPIC/match query, 8 in series", "C3", "--s"),
    ("local", "match 1"): ("match, embedded, 1 orientation", "C1", "-D"),
    ("local", "match 8"): ("match, embedded, 8 orientations", "C1", "--D"),
}


def load(directory: Path) -> dict[tuple[str, str], dict[int, dict[str, float]]]:
    """(backend, contender) -> {n: latest row}, smoke runs left out."""
    series: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for name in ("es_scale.jsonl", "local_store.jsonl"):
        path = directory / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("smoke") or row.get("corpus", "scale") != "scale":
                continue
            size = int(row.get("docs", row["n"]))  # es_scale's early rows: n was the sample count
            series.setdefault((row["backend"], row["contender"]), {})[size] = row
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "scale.png")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = load(args.results or common.results_dir())
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=80)
    for key, (label, color, style) in STYLES.items():
        points = series.get(key)
        if not points:
            continue
        sizes = sorted(points)
        left.plot(sizes, [points[n]["p50"] for n in sizes], style, color=color, label=label, markersize=4)
        if all("cpu_ms" in points[n] for n in sizes):
            right.plot(sizes, [points[n]["cpu_ms"] for n in sizes], style, color=color, label=label,
                       markersize=4)
    left.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    left.text(1.1e4, 42, "target: p50 50 ms", color="grey", fontsize=8)
    for axis, title in ((left, "p50 latency, ms (2 cores, shared machine)"),
                        (right, "CPU ms per query (client + ES node; embedded: median)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("indexed images")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", linewidth=0.3)
    left.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
