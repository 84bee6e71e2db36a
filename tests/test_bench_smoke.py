"""Every bench script still runs: each one in its tiny ``--smoke`` mode.

Benchmarks are not tests and nothing here is timed; this only keeps the scripts from
rotting as the code they measure changes (an import, a renamed setting, a store API).
Each script runs as a user would run it (``python -m bench.<name>``), must exit 0 and
must print its figures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (module, extra arguments, needs Elasticsearch, a line the output must contain)
SCRIPTS = [
    ("signature_speed", ["--smoke"], False, "signatures identical to image-match: True"),
    ("local_store", ["--smoke"], False, "search, 8 signatures"),
    ("quality", ["--smoke"], False, "recall@1"),
    ("crop_quality", ["--smoke"], False, "R@thr"),
    ("http_load", ["--smoke"], False, "requests/s"),
    ("exif_orientation", ["--smoke"], False, "8 orientations"),
    ("crowd_loop", ["--smoke"], False, "bound: exact Bayes"),
    ("es_scale", ["--smoke"], True, "anchor 8"),
    ("ingest", ["--smoke"], True, "match add DIR"),
    ("es_recall", ["--images", "300", "--queries", "10"], True, "recall"),
]


def _run(module: str, arguments: list[str], tmp_path: Path, es_url: str | None) -> str:
    env = {**os.environ, "MATCH_BENCH_RESULTS": str(tmp_path / "results"),
           "MATCH_BENCH_CACHE": str(tmp_path / "cache")}
    if es_url is not None:
        arguments = [*arguments, "--url", es_url]
    result = subprocess.run([sys.executable, "-m", f"bench.{module}", *arguments], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"bench.{module} exited {result.returncode}:\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("module", "arguments", "needs_es", "expected"),
                         [pytest.param(*script, id=script[0],
                                       marks=[pytest.mark.elasticsearch] if script[2] else [])
                          for script in SCRIPTS])
def test_bench_script_runs(module: str, arguments: list[str], needs_es: bool, expected: str,
                           tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if module == "http_load" and shutil.which("wrk") is None:
        arguments = [*arguments, "--python-load"]
    es_url = request.getfixturevalue("es_url") if needs_es else None
    output = _run(module, arguments, tmp_path, es_url)
    assert expected in output, output


@pytest.mark.slow
def test_plot_draws_the_results(tmp_path: Path) -> None:
    _run("local_store", ["--sizes", "300", "--searches", "3"], tmp_path, None)
    output = _run("plot", ["--out", str(tmp_path / "scale.png"), "--results", str(tmp_path / "results")],
                  tmp_path, None)
    assert "wrote" in output
    assert (tmp_path / "scale.png").stat().st_size > 1000
