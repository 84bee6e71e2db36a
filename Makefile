# One entry point for routine tasks.
.PHONY: install run test test-fast lint typecheck image bench

install:            ## install match and its runtime dependencies
	python3 -m pip install -e .

run: install        ## serve on the embedded store at http://127.0.0.1:8000
	match serve

test:               ## everything: installs test deps, photos, Elasticsearch, then pytest
	scripts/test

test-fast:          ## the embedded-store tests only, without starting Elasticsearch
	python3 -m pytest -m "not elasticsearch and not slow and not browser" -k "not elasticsearch"

lint:
	python3 -m ruff check match tests bench

typecheck:
	python3 -m mypy

image:              ## needs a Docker engine
	docker build -t match:latest .

bench:              ## the benchmarks (not tests): see BENCHMARKS.md
	@ls bench/*.py
