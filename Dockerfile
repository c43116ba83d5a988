# syntax=docker/dockerfile:1
# metrics-server (Python on trio) container image.
#
#   docker build -t ghcr.io/metrics-server-py/metrics-server:v0.1.0 .
#
# The image runs as uid/gid 1000 with a read-only root filesystem; the only writable
# path it needs is /tmp (an emptyDir in the shipped manifests), where the server writes
# its self-signed serving certificate (--cert-dir=/tmp).
# tests/deploy/test_dockerfile.py lints this file with hadolint and runs the builder's
# install step (the RUN line below) in a clean venv.

# ---- builder: build a wheel of the project and install it into a venv ----------------
FROM python:3.12.12-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    WHEEL_DIR=/tmp/wheels

WORKDIR /src
COPY pyproject.toml README.m[d] ./
COPY metrics_server ./metrics_server

# install-step: the wheel is built with pip's isolated build (setuptools is fetched for
# the build only); the venv is created without pip and the builder's own pip installs into
# it (--python), so the venv gets the wheel, its dependencies and nothing else.
RUN python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir "$WHEEL_DIR" . \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir "$WHEEL_DIR"/*.whl \
    && "$VIRTUAL_ENV/bin/metrics-server" --help >/dev/null

# ---- final: the Python runtime plus the venv, nothing else ---------------------------
FROM python:3.12.12-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="metrics-server" \
      org.opencontainers.image.description="Kubernetes Metrics Server (metrics.k8s.io/v1beta1) in Python on trio" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/metrics-server-py/metrics-server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.12-slim-bookworm"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

COPY --from=builder /opt/venv /opt/venv

# Numeric, so that the kubelet can check runAsNonRoot without an /etc/passwd lookup.
USER 1000:1000
WORKDIR /tmp
EXPOSE 10250

ENTRYPOINT ["metrics-server"]
