#!/usr/bin/env bash
# The real container check: build the CPU image, run it as compose does, check what
# an operator relies on, clean up. Needs a container engine that answers
# (`docker info`) and Compose v2 (`docker compose`, or `docker-compose`, or the
# binary named by $COMPOSE). Prints one line per check and the figures
# (build time, image size, cold start to ready); exits non-zero at the first failure.
#
#   deploy/check-image.sh                      # Docker Hub and PyPI reachable
#   IMAGE_BUILD_ARGS="--network host --build-arg PYTHON_IMAGE=... --build-arg PIP_INDEX_URL=..." \
#   REDIS_IMAGE=... deploy/check-image.sh      # stand-ins (deploy/stand-ins.sh prints these)
#
# Checks: a bare `docker run` refuses to start without a key (exit 78, one line);
# `compose up`: readiness, the demo models published by the job, a prediction, the
# api runs as uid 10001, the container's health check turns healthy; a model
# uploaded with the key survives `down`/`up` (Redis's append-only file on its
# volume); a placeholder key is not restarted in a loop (on-failure:3, exit 78).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${PEMN_IMAGE:-pemn-serve:cpu}
PROJECT=${CHECK_PROJECT:-pemn-check-$$}
PORT=${CHECK_PORT:-18080}
KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
read -r -a BUILD_ARGS <<<"${IMAGE_BUILD_ARGS:-}"

if ! docker info >/dev/null 2>&1; then
  echo "skip: no container engine answers (docker info)"; exit 77
fi
if [[ -n "${COMPOSE:-}" ]]; then read -r -a DC <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then DC=(docker compose)
elif command -v docker-compose >/dev/null; then DC=(docker-compose)
else echo "skip: no Compose v2 (docker compose / docker-compose / \$COMPOSE)"; exit 77
fi

ENVFILE=$(mktemp)
cleanup() {
  "${DC[@]}" -p "$PROJECT" --env-file "$ENVFILE" down -v --remove-orphans >/dev/null 2>&1 || true
  docker rm -f "$PROJECT-bare" >/dev/null 2>&1 || true
  rm -f "$ENVFILE"
}
trap cleanup EXIT
write_env() {  # write_env KEY
  {
    echo "API_KEY=$1"
    echo "PEMN_HTTP_PORT=$PORT"
    echo "PEMN_IMAGE=$IMAGE"
    [[ -n "${REDIS_IMAGE:-}" ]] && echo "REDIS_IMAGE=$REDIS_IMAGE"
  } >"$ENVFILE"
}
dc() { "${DC[@]}" -p "$PROJECT" --env-file "$ENVFILE" "$@"; }
fail() { echo "FAIL: $*"; dc logs --no-color --tail 40 >&2 || true; exit 1; }
ok() { echo "ok: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
http() { python3 - "$@" <<'PY'
import json, sys, urllib.request, urllib.error
method, url, *rest = sys.argv[1:]
data = rest[0].encode() if rest and rest[0] else None
headers = {"content-type": "application/json"}
if len(rest) > 1:
    headers["X-API-Key"] = rest[1]
if len(rest) > 2:
    headers["content-type"] = "application/octet-stream"
    data = open(rest[2], "rb").read()
req = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode()[:2000])
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode()[:2000])
except OSError as e:
    print(0, e)
PY
}
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local end=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < end )) || return 1
    sleep 0.5
  done
}
ready() { [[ "$(http GET "http://127.0.0.1:$PORT/v2/health/ready" | cut -d' ' -f1)" == 200 ]]; }

# ---------------------------------------------------------------- build
t0=$(now)
docker build "${BUILD_ARGS[@]}" -t "$IMAGE" . >/tmp/"$PROJECT"-build.log 2>&1 \
  || { tail -30 /tmp/"$PROJECT"-build.log; fail "docker build"; }
echo "figure: build time $(since "$t0") s (docker build)"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "figure: image size $(( size / 1000000 )) MB ($IMAGE)"

# ---------------------------------------------------------------- bare docker run
set +e
out=$(docker run --name "$PROJECT-bare" "$IMAGE" 2>&1); code=$?
set -e
[[ $code == 78 && "$out" == *"PEMN_API_KEY must be set"* ]] \
  || fail "bare docker run: exit $code: $out"
ok "bare docker run refuses to start without a key (exit 78: ${out##*: })"

# ---------------------------------------------------------------- compose up
write_env "$KEY"
t0=$(now)
dc up -d --no-build >/dev/null 2>&1 || fail "compose up"
wait_for 180 ready || fail "not ready within 180 s"
echo "figure: cold start to ready $(since "$t0") s (compose up -d: Redis healthy, then the api)"
ok "ready: $(http GET "http://127.0.0.1:$PORT/v2/health/ready")"

job=$(dc ps -a -q trainer)
wait_for 120 bash -c "[[ \$(docker inspect -f '{{.State.Status}}' $job) == exited ]]" \
  || fail "the publishing job did not finish"
[[ $(docker inspect -f '{{.State.ExitCode}}' "$job") == 0 ]] || fail "the publishing job failed"
models_listed() { http GET "http://127.0.0.1:$PORT/models" | grep -q '"fashion-mnist"' \
  && http GET "http://127.0.0.1:$PORT/models" | grep -q '"mnist"'; }
wait_for 30 models_listed || fail "demo models not listed: $(http GET "http://127.0.0.1:$PORT/models")"
ok "demo models published by the job and listed: fashion-mnist, mnist"

x=$(python3 -c 'import json; print(json.dumps({"model": "fashion-mnist", "inputs": [[[[0.5] * 28] * 28]], "top_k": 2}))')
answer=$(http POST "http://127.0.0.1:$PORT/predict" "$x")
[[ $answer == 200* && $answer == *'"top"'* ]] || fail "prediction: $answer"
ok "prediction: ${answer:0:160}"

uid=$(dc exec -T api id -u)
[[ $uid == 10001 ]] || fail "api runs as uid $uid"
ok "api runs as uid $uid (non-root)"

api=$(dc ps -q api)
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$api") == healthy ]]; }
wait_for 60 healthy || fail "health: $(docker inspect -f '{{.State.Health.Status}}' "$api")"
ok "container health check: healthy (probes /v2/health/ready)"

# ---------------------------------------------------------------- persistence
bundle=$(mktemp)
dc exec -T api cat /app/examples/bundles/mnist.pemn >"$bundle"
answer=$(http POST "http://127.0.0.1:$PORT/models?name=persisted" "" "$KEY" "$bundle")
rm -f "$bundle"
[[ $answer == 201* ]] || fail "upload: $answer"
dc down >/dev/null 2>&1 || fail "compose down"
dc up -d --no-build redis api >/dev/null 2>&1 || fail "compose up (again)"
wait_for 180 ready || fail "not ready again"
answer=$(http GET "http://127.0.0.1:$PORT/models/persisted")
[[ $answer == 200* ]] || fail "after down/up: $answer"
ok "a model uploaded with the key survives down/up: ${answer:0:80}"
dc down -v >/dev/null 2>&1

# ---------------------------------------------------------------- refused start
write_env changeme
dc up -d --no-build redis api >/dev/null 2>&1 || true
api=$(dc ps -a -q api)
stopped() { [[ $(docker inspect -f '{{.State.Status}}' "$api") == exited ]] \
  && [[ $(docker inspect -f '{{.RestartCount}}' "$api") == 3 ]]; }
wait_for 60 stopped || fail "placeholder key: $(docker inspect -f '{{.State.Status}} restarts={{.RestartCount}}' "$api")"
sleep 5
restarts=$(docker inspect -f '{{.RestartCount}}' "$api")
code=$(docker inspect -f '{{.State.ExitCode}}' "$api")
[[ $restarts == 3 && $code == 78 ]] || fail "placeholder key: restarts=$restarts exit=$code"
line=$(dc logs --no-color api 2>&1 | grep -m1 'refusing to start' || true)
[[ -n $line ]] || fail "no refusal line in the api's log"
ok "placeholder key: exit 78, restarted $restarts times then left stopped (${line##*| })"
echo "all container checks passed"
