# syntax=docker/dockerfile:1
# slicecache: one uvicorn process per container (scale out with more containers/pods).
#   docker build -t slicecache:0.1.0 .
#   docker run --rm -p 8080:8080 -e SLICECACHE_UPSTREAM_ADDRESS=origin:80 \
#     -e SLICECACHE_ENABLE_L2_CACHE=true -v slicecache-l2:/var/cache/slicecache slicecache:0.1.0

# The base image by digest (a tag moves when it is rebuilt). Refresh both together:
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm   (the index digest)
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# --- stage 1: wheels of the project and of all its dependencies -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# .dockerignore lets in only what the wheel needs (pyproject.toml, README.md, settings.py, app/, cache/).
COPY . .
# requirements.lock pins every dependency: the image gets the versions CI tested.
RUN pip wheel --wheel-dir /wheels -c requirements.lock .

# --- stage 2: runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLICECACHE_HOST=0.0.0.0 \
    SLICECACHE_PORT=8080 \
    SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH=/var/cache/slicecache/l2.bin
RUN groupadd --system --gid 10001 slicecache \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin slicecache \
 && mkdir -p /var/cache/slicecache \
 && chown 10001:10001 /var/cache/slicecache
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels slicecache
USER 10001:10001
# The L2 device file lives here (SLICECACHE_RAW_DISK_CACHE__DEVICE_PATH); mount a volume.
VOLUME ["/var/cache/slicecache"]
EXPOSE 8080
# Docker only (Kubernetes uses the chart's probes). urllib raises on non-2xx, so a failing
# healthz exits non-zero; the admin routes may be on SLICECACHE_ADMIN_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; e = os.environ.get; p = e('SLICECACHE_ADMIN_PORT', '0'); p = p if p not in ('', '0') else e('SLICECACHE_PORT', '8080'); u.urlopen(f\"http://127.0.0.1:{p}{e('SLICECACHE_ADMIN_PREFIX', '/_slicecache')}/healthz\", timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["slicecache"]
