# syntax=docker/dockerfile:1
# One image for every role of dicom-gateway:
#   dicom-gateway run                     all roles in one process (single mode)
#   dicom-gateway run --role receiver     one role per pod (split mode, Kubernetes)
#
# Build: docker build --build-arg VERSION=$(git describe --tags) \
#          --build-arg REVISION=$(git rev-parse HEAD) -t dicom-gateway .

ARG PYTHON_VERSION=3.11

# --- builder: the package and its dependencies in a virtualenv -------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore lets only pyproject.toml, README/LICENSE and the packages in.
COPY . .
# Every dependency ships manylinux wheels for CPython 3.11/3.12, so no compiler
# is needed here either. The pip cache is a BuildKit cache mount (fast rebuilds,
# nothing left in a layer). pip compiles the bytecode: the runtime root
# filesystem is read-only, so nothing could write __pycache__ there.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . \
    && dicom-gateway --help >/dev/null

# --- runtime: the virtualenv on a clean slim image, non-root --------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="dicom-gateway" \
      org.opencontainers.image.description="DICOM ingestion gateway: DICOM/DICOM-TLS receiver and Kafka worker pools (store, register, notify)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed UID/GID 10001: the Helm chart's securityContext runs as this user.
RUN groupadd --system --gid 10001 dicomgw \
    && useradd --system --uid 10001 --gid dicomgw --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dicomgw \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/dicom-gateway

COPY --from=builder /opt/venv /opt/venv

# The gateway binds its HTTP port on 127.0.0.1 by default; a container must
# serve it to other hosts (published ports, Kubernetes probes and Services).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_DATA_DIR=/var/lib/dicom-gateway \
    GATEWAY_HTTP__HOST=0.0.0.0

USER 10001:10001
WORKDIR /var/lib/dicom-gateway
VOLUME ["/var/lib/dicom-gateway"]

# 11112 DICOM, 2762 DICOM-TLS, 8080 HTTP(S): the API (bearer tokens), /healthz,
# /readyz, /metrics. The internal port (8081, GATEWAY_INTERNAL__*) binds
# 127.0.0.1 unless GATEWAY_INTERNAL__HOST says otherwise.
EXPOSE 11112 2762 8080

# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on port 8080.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dicom-gateway"]
CMD ["run"]
