# syntax=docker/dockerfile:1
#
# The match image: `match serve` (gunicorn) on port 8000, data in /data.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t match-server:0.1.0 .
#   docker run --rm -p 8000:8000 -v match-data:/data match-server:0.1.0
#
# Two stages: the first turns the source and every dependency into wheels, the
# second installs only those wheels, so the runtime image has no build context,
# no pip cache and no compiler. Settings are the MATCH_* environment variables
# of match/config.py (README.md lists them); see docs/deploy.md.

# One base for both stages, pinned by tag (Debian 12 "bookworm", Python 3.11, as CI).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels for match and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what setup.py needs (.dockerignore allow-lists the same files).
COPY setup.py pyproject.toml README.md ./
COPY match ./match
# numpy and Pillow ship manylinux wheels, so no compiler is needed here.
RUN pip wheel --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The package version, also checked by pip below: a mismatch with
# match/__init__.py fails the build instead of mislabelling the image.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="match" \
      org.opencontainers.image.description="Reverse image search server (Goldberg image signatures in Elasticsearch or an embedded store)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# curl only serves the HEALTHCHECK below. Not version-pinned on purpose: the
# bookworm security updates should come in with each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed, numeric, unprivileged user: Kubernetes' runAsNonRoot can only verify a
# numeric USER, and k8s/deployment.yaml runs as the same 10001.
RUN groupadd --system --gid 10001 match \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/match --create-home \
            --shell /usr/sbin/nologin match \
 && mkdir -p /data \
 && chown 10001:10001 /data

# Install from the build stage's wheels only (--no-index: nothing else is fetched);
# the bind mount keeps the wheels out of every layer. pip byte-compiles here, so a
# read-only root filesystem never needs to write .pyc files.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "match-server==${VERSION}"

# Server settings, all overridable at `docker run -e` / in Kubernetes:
# - MATCH_HOST: bind every interface, or the port is unreachable from outside;
# - MATCH_WORKERS: explicit, because the default (2 x CPU cores) counts the host's
#   cores, not the container's CPU limit;
# - MATCH_DATA_DIR: the embedded store lives on the /data volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MATCH_HOST=0.0.0.0 \
    MATCH_PORT=8000 \
    MATCH_WORKERS=2 \
    MATCH_TIMEOUT=60 \
    MATCH_DATA_DIR=/data

WORKDIR /home/match
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

# Liveness only (/ping does no IO); readiness (/ready, the store answers) is for
# orchestrators. Shell form so ${MATCH_PORT} is read when the check runs; curl's
# exit codes are folded to 1, the only failure code Docker defines. (hadolint's
# DL3025 asks for JSON form, which would not expand the variable.)
# hadolint ignore=DL3025
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${MATCH_PORT}/ping" || exit 1

# gunicorn's arbiter is PID 1 (exec form, no shell in between): SIGTERM makes it
# stop accepting, finish in-flight requests within its graceful timeout, then exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["match"]
CMD ["serve"]
