#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, for a CUDA machine (e.g. the project's
# lent H200): the CUDA tests, materialization, batches that mix tasks, and task
# swapping over HTTP with the server on the GPU. About 5 minutes; under 8.
#
#   bash bench/gpu.sh [OUT_DIR]        # results in OUT_DIR (default: $OUT or ./gpu-results)
#
# Python packages: the machine's own (PyTorch with CUDA, numpy, onnx, ...), plus
# this project's other dependencies, installed from wheels in .whl/ when present
# (a machine without a package index: fetch them first with `bash bench/gpu-wheels.sh`
# on a machine that has one), else from the index.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
start=$(date +%s)
py=python3
log() { echo "== $* ($(( $(date +%s) - start )) s)"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pemn-site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/pemn-site:$PWD"
else
  $py -m pip install -q fastapi 'uvicorn[standard]' python-multipart pydantic-settings redis prometheus-client httpx || exit 1
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
$py - <<'PY' | tee "$out/device.txt" || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name(0))
PY
# A copy of the benchmarks page: the benchmarks write their sections into it.
cp docs/benchmarks.md /tmp/pemn-benchmarks-before.md

log "CUDA tests"
$py -m pytest tests/pemn/test_cuda.py -q -p no:cacheprovider -W ignore::DeprecationWarning \
  -W ignore::UserWarning -W ignore::FutureWarning 2>&1 | tee "$out/tests.txt"

log "materialization on the GPU"
timeout 120 $py bench/bench_materialize.py --device cuda --repeats 100 2>&1 | tee "$out/materialize.txt"

log "mixed batches on the GPU"
timeout 150 $py bench/bench_batching.py --device cuda --batches 8,32,64 --repeats 10 2>&1 | tee "$out/batching.txt"

log "task swapping over HTTP, server on the GPU"
timeout 200 $py bench/bench_task_swap.py --device cuda --tasks 200 --hot 10 --duration 4 \
  --warmup 1 --rounds 1 --concurrency 1,16,64 2>&1 | tee "$out/task_swap.txt"

cp docs/benchmarks.md "$out/benchmarks.md"
log "done"
