# syntax=docker/dockerfile:1
# kmsgate container image: docker build -t kmsgate . ; docker compose -f docker/compose.yaml up
# See docs/installation.md (Docker) for volumes, the database and the source policy.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: venv + C cipher
FROM ${PYTHON_IMAGE} AS build
# gcc and the C library headers compile kmsgate.protocol._cipher (Python's headers ship in
# the python image), libssl-dev lets it seal v5/v6 responses with libcrypto (libssl3 is in
# the runtime image: Python's own hashlib links it), zlib1g-dev builds the record ring's C
# append (zlib1g is in the runtime image too: Python's zlib module links it). Every other dependency installs from a
# binary wheel.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kmsgate
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# The extensions are optional for pip (kmsgate falls back to pure Python): fail the build
# instead if the cipher or the mypyc-compiled hot path did not compile.
RUN /opt/kmsgate/bin/pip install . \
    && /opt/kmsgate/bin/python -c "import kmsgate.protocol._cipher; from kmsgate.protocol.crypto import ACCELERATED, C_SEAL; assert ACCELERATED and C_SEAL" \
    && /opt/kmsgate/bin/python -c "import kmsgate.protocol._wire, kmsgate.recording._ring" \
    && /opt/kmsgate/bin/python -c "from kmsgate import _native; assert _native.NATIVE, _native.NATIVE_STATUS"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 kmsgate \
    && useradd --system --uid 10001 --gid kmsgate --home-dir /var/lib/kmsgate --no-create-home \
        --shell /usr/sbin/nologin kmsgate \
    && mkdir -p /var/lib/kmsgate /etc/kmsgate \
    && chown kmsgate:kmsgate /var/lib/kmsgate \
    && chmod 0750 /var/lib/kmsgate
# Same base image and path as the build stage, so the venv's interpreter links stay valid.
COPY --from=build /opt/kmsgate /opt/kmsgate
COPY docker/healthcheck.py /opt/kmsgate/healthcheck.py
# KMSGATE_WEB: the dashboard, /metrics and /healthz must listen beyond the container's own
# loopback to be published (compose publishes it on the host's 127.0.0.1 only).
ENV PATH=/opt/kmsgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KMSGATE_DATA_DIR=/var/lib/kmsgate \
    KMSGATE_WEB=0.0.0.0:8080
USER 10001:10001
WORKDIR /var/lib/kmsgate
EXPOSE 1688 8080
VOLUME /var/lib/kmsgate
# GET /healthz on the web listener (found from the same settings as serve): the node and its
# database answer. It records nothing, unlike a KMS activation would every minute, and works
# in gateway mode too.
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/kmsgate/healthcheck.py"]
ENTRYPOINT ["kmsgate"]
CMD ["serve"]
