#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels bench/gpu.sh installs on a
# CUDA machine without one (the project's lent H200: Python 3.12, x86-64, its own
# PyTorch, numpy, onnx, onnxruntime, httpx, uvloop...). They land in .whl/ (ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv \
  typing-inspection annotated-types uvicorn httptools websockets watchfiles python-multipart \
  redis prometheus-client annotated-doc
ls .whl
