# pemn-serve CPU image (the default):  docker build -t pemn-serve:cpu .
# GPU image: Dockerfile.gpu (its own file, so this build never touches CUDA images,
# with or without BuildKit).
#
# Runs `python -m service --host 0.0.0.0` as the non-root user 10001 on port 8000 in
# production mode: without PEMN_API_KEY (16+ characters) it refuses to start, exit
# 78; `-e PEMN_ENVIRONMENT=development` asks for the keyless development mode. The
# HEALTHCHECK probes /v2/health/ready with Python's urllib: healthy once the store is
# synced. The project is installed without its dev extra (the build fails if a test
# tool slipped in). The demo bundles (examples/bundles/*.pemn) are in
# /app/examples/bundles for the publishing job:
#   python -m pemn publish /app/examples/bundles --store "$PEMN_STORE_URL"
#
# Build arguments for builders without Docker Hub or the PyTorch index (see
# deploy/check-image.sh): PYTHON_IMAGE (a Debian-based Python 3.11 with `python` and
# venv), PIP_INDEX_URL and TORCH_CPU_INDEX (e.g. a loopback index with --network host).
# Checked by tests/deploy/test_dockerfile.py (stages, user, health check, entry point).

ARG PYTHON_IMAGE=python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple

# ---------------------------------------------------------------- source
# The project files the image needs, plus an examples/bundles directory that always
# exists (empty until the demo bundles are in the tree).
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY . .
RUN mkdir -p examples/bundles

# ---------------------------------------------------------------- cpu-builder
FROM ${PYTHON_IMAGE} AS cpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ARG PIP_INDEX_URL
RUN pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=source /src /src
# torch is already satisfied by the CPU build, so pip keeps it. The build fails if a
# dev tool got in.
RUN pip install --index-url "${PIP_INDEX_URL}" "/src[s3]" \
 && python -c "import importlib.util as u, sys; dev = [m for m in ('pytest', 'mypy', 'ruff', 'moto', 'hypothesis') if u.find_spec(m)]; sys.exit(f'dev tools in the image: {dev}' if dev else 0)"

# ---------------------------------------------------------------- cpu (default)
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 pemn \
 && useradd --system --uid 10001 --gid pemn --home-dir /app --shell /usr/sbin/nologin pemn \
 && mkdir -p /app /data && chown pemn:pemn /data
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=source --chown=10001:10001 /src/examples /app/examples
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PEMN_ENVIRONMENT=production PEMN_STORE_URL=file:///data/store PEMN_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('PEMN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]
