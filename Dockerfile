# syntax=docker/dockerfile:1
# pemn-serve images. Two final targets, built from the same source:
#
#   cpu (default: the last stage)   python:3.11-slim + CPU-only torch
#       docker build -t pemn-serve:cpu .
#   gpu                             NVIDIA CUDA runtime (with cuDNN) + CUDA torch + onnxruntime-gpu
#       docker build --target gpu -t pemn-serve:gpu .
#       (run with a GPU: docker run --gpus all ..., or docker-compose.gpu.yml)
#
# Both run `python -m service --host 0.0.0.0` as the non-root user 10001 on port 8000,
# check /v2/health/live with Python's urllib, and hold the project installed without
# its dev extra (the build fails if a test tool slipped in). The demo bundles
# (examples/bundles/*.pemn) are in /app/examples/bundles for the publishing job:
#   python -m pemn publish /app/examples/bundles --store "$PEMN_STORE_URL"
# Checked by tests/deploy/test_dockerfile.py (stages, user, health check, entry point).

ARG PYTHON_VERSION=3.11
# torch comes from the PyTorch wheel index: CPU-only for `cpu` (small), CUDA for `gpu`.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# Keep the CUDA of the base image and of the torch index in step (cu128 <-> 12.8).
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- source
# The project files the image needs, plus an examples/bundles directory that always
# exists (empty until the demo bundles are in the tree).
FROM python:${PYTHON_VERSION}-slim AS source
WORKDIR /src
COPY . .
RUN mkdir -p examples/bundles

# ---------------------------------------------------------------- gpu
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive
# The distribution's python3 is pinned by the (pinned) CUDA_IMAGE tag.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX
RUN pip install --index-url "${TORCH_CUDA_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=source /src /src
# onnxruntime (a base dependency) and onnxruntime-gpu (the gpu extra) share one
# Python package: keep only the GPU build, at the version the extra resolved.
# The build fails if a dev tool got in.
RUN pip install "/src[s3,gpu]" \
 && ort="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
 && pip uninstall -y onnxruntime onnxruntime-gpu \
 && pip install --no-deps "onnxruntime-gpu==${ort}" \
 && python -c "import importlib.util as u, sys; dev = [m for m in ('pytest', 'mypy', 'ruff', 'moto') if u.find_spec(m)]; sys.exit(f'dev tools in the image: {dev}' if dev else 0)"

FROM gpu-base AS gpu
RUN groupadd --system --gid 10001 pemn \
 && useradd --system --uid 10001 --gid pemn --home-dir /app --shell /usr/sbin/nologin pemn \
 && mkdir -p /app /data && chown pemn:pemn /data
COPY --from=gpu-builder /opt/venv /opt/venv
COPY --from=source --chown=10001:10001 /src/examples /app/examples
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PEMN_STORE_URL=file:///data/store PEMN_DEVICE=auto PEMN_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('PEMN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]

# ---------------------------------------------------------------- cpu (default)
FROM python:${PYTHON_VERSION}-slim AS cpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
RUN pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=source /src /src
# torch is already satisfied by the CPU build, so pip keeps it. The build fails if a
# dev tool got in.
RUN pip install "/src[s3]" \
 && python -c "import importlib.util as u, sys; dev = [m for m in ('pytest', 'mypy', 'ruff', 'moto') if u.find_spec(m)]; sys.exit(f'dev tools in the image: {dev}' if dev else 0)"

FROM python:${PYTHON_VERSION}-slim AS cpu
RUN groupadd --system --gid 10001 pemn \
 && useradd --system --uid 10001 --gid pemn --home-dir /app --shell /usr/sbin/nologin pemn \
 && mkdir -p /app /data && chown pemn:pemn /data
COPY --from=cpu-builder /opt/venv /opt/venv
COPY --from=source --chown=10001:10001 /src/examples /app/examples
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PEMN_STORE_URL=file:///data/store PEMN_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/live' % os.environ.get('PEMN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]
