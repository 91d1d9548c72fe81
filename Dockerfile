# One image for every lastmile role; the role is the subcommand given at run time:
#
#   docker run IMAGE ingest | worker | coverage | topics create | registry load DIR
#
# docker-compose.yml runs each role as a service. Settings come from the environment only
# (lastmile/settings.py; the table in docs/settings.md lists every variable).

# ---- build: resolve and install everything into a virtualenv that the runtime stage copies whole ----
FROM python:3.11-slim AS build

# A C compiler for the rare platform where a pinned package has no wheel and pip must build its sdist
# (on linux/amd64 and linux/arm64 every pinned package ships wheels today). It stays in this stage:
# the runtime stage starts again from the bare base image.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/lastmile \
    PATH=/opt/lastmile/bin:$PATH

RUN python -m venv /opt/lastmile

WORKDIR /src

# The runtime dependencies first, from their lock alone (no test tools, no embedded broker), so this
# layer is rebuilt only when that lock changes.
# --require-hashes: every file pip downloads must match a hash in the lock, transitive ones included.
COPY requirements-runtime.lock ./
RUN pip install --require-hashes -r requirements-runtime.lock

# Then the project itself, without touching the dependencies the lock just pinned.
COPY pyproject.toml README.md LICENSE ./
COPY lastmile ./lastmile
COPY ingest_service ./ingest_service
COPY coverage_service ./coverage_service
RUN pip install --no-deps . \
    && lastmile --help > /dev/null

# ---- runtime: the base image, the virtualenv, an unprivileged user; no compiler, no sources ----
FROM python:3.11-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="lastmile-coverage" \
      org.opencontainers.image.description="Live, exact express-to-villages coverage figures from carriers' last-mile scan events: ingest API, stream worker, coverage API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# A fixed numeric uid/gid, so that files mounted from the host (the carrier tokens secret, a registry
# folder) can be made readable to it, and so that runtimes checking "runAsNonRoot" can verify it.
RUN groupadd --system --gid 10001 lastmile \
    && useradd --system --uid 10001 --gid lastmile --create-home --home-dir /home/lastmile \
       --shell /usr/sbin/nologin lastmile \
    && install --directory --owner=lastmile --group=lastmile /app

# Same base image and same path as in the build stage, so the venv's interpreter links and the
# console scripts' shebangs (#!/opt/lastmile/bin/python) stay valid.
COPY --from=build /opt/lastmile /opt/lastmile

ENV VIRTUAL_ENV=/opt/lastmile \
    PATH=/opt/lastmile/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The working directory is writable by the service user (the Faust worker keeps its data dir under
# the cwd); docker-compose.yml mounts the division registry read-only at /app/registry.
WORKDIR /app
USER 10001:10001

# Documentation only: ingest listens on INGEST_PORT (8000), coverage on COVERAGE_PORT (8001).
EXPOSE 8000 8001

# No HEALTHCHECK here, on purpose. This one image runs four different roles: two HTTP APIs on
# different ports, a worker with no HTTP server at all, and the one-shot `topics create` /
# `registry load`. Any single image-level check would be wrong for most of them (and would report
# the one-shot jobs as "starting"/"unhealthy"). Each service gets the check that fits it in
# docker-compose.yml; Kubernetes ignores image HEALTHCHECKs and uses its own probes anyway.

ENTRYPOINT ["lastmile"]
CMD ["--help"]
