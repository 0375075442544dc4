# syntax=docker/dockerfile:1
# The passerelle gateway for the scale-out setup: `passerelle serve` with the PostgreSQL and S3
# extras. Build from the repository root (see docs/deploy.md):
#
#   docker build -t passerelle:0.1.0 .
#
# Both stages use the same base image: the virtualenv built in the first one points at the
# interpreter's path, which must be the same in the second.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/passerelle
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src/ ./src/
# A regular install, not an editable one: the runtime stage receives the virtualenv only, so
# nothing at run time needs the source tree or the network.
RUN /opt/passerelle/bin/pip install ".[postgres,s3]"


FROM python:3.11-slim AS runtime

# A fixed numeric uid/gid: Kubernetes can only check runAsNonRoot against a numeric USER, and
# the manifests name the same ids for runAsUser and fsGroup so mounted volumes are writable.
RUN groupadd --system --gid 10001 passerelle \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/passerelle \
        --no-create-home --shell /usr/sbin/nologin passerelle \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/passerelle

COPY --from=build /opt/passerelle /opt/passerelle

# OMP_NUM_THREADS and the other thread-pool variables are deliberately left unset: each serving
# worker caps its native thread pools to its share of the cores when it starts.
ENV PATH=/opt/passerelle/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PASSERELLE_HOME=/var/lib/passerelle

# The home holds the prediction log's segments (predictions/, the spool of answered rows not yet
# in the database) and the artifact cache: it must be writable, and the log must outlive the
# process.
VOLUME ["/var/lib/passerelle"]
USER 10001:10001
WORKDIR /var/lib/passerelle

EXPOSE 8000

# The slim image has no curl; the virtualenv's python is on PATH. urlopen raises on a refused
# connection and on any non-2xx answer, which makes the check fail.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["passerelle"]
# A container has to listen beyond loopback to be reachable at all, so every request but health,
# metrics and docs needs an API token (--auth; docs/security.md). Create the first admin token
# with `passerelle tokens create --role admin --name NAME` against the same database.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--auth"]
