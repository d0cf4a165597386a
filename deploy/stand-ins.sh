#!/usr/bin/env bash
# Stand-ins for a builder that cannot reach Docker Hub or the PyTorch index (this
# project's development machine): local base images made with debootstrap, and the
# Python packages served from a loopback index. Run as root on Debian/Ubuntu with
# debootstrap, docker and a Python 3.11 virtualenv of the project (make setup).
#
#   deploy/stand-ins.sh [WORKDIR]        # default /var/tmp/pemn-stand-ins
#
# Makes (once; later runs reuse them):
#   pemn-local/python:3.11-bookworm  Debian 12 minbase + python3 (3.11), venv, `python`
#   pemn-local/redis:7-bookworm      the same + Debian's redis-server (7.0)
#   WORKDIR/index/simple/<project>/  the image's packages (`pip download` of the
#                                    project with its s3 extra, torch==2.13.0 included)
# then serves the index on 127.0.0.1:$INDEX_PORT (default 18999) in the background
# and prints the environment for deploy/check-image.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
WORK=${1:-/var/tmp/pemn-stand-ins}
PORT=${INDEX_PORT:-18999}
PIP=${PIP:-.venv/bin/pip}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$WORK"

image_missing() { ! docker image inspect "$1" >/dev/null 2>&1; }

if image_missing pemn-local/python:3.11-bookworm || image_missing pemn-local/redis:7-bookworm; then
  if [[ ! -x $WORK/py-rootfs/usr/bin/python3 ]]; then
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$WORK/py-rootfs" "$MIRROR"
  fi
  if [[ ! -x $WORK/redis-rootfs/usr/bin/redis-server ]]; then
    rm -rf "$WORK/redis-rootfs"
    cp -a "$WORK/py-rootfs" "$WORK/redis-rootfs"
    chroot "$WORK/redis-rootfs" bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends redis-server && apt-get clean && rm -rf /var/lib/apt/lists/*'
  fi
  tar -C "$WORK/py-rootfs" -c . | docker import --change 'CMD ["python3"]' - pemn-local/python:3.11-bookworm
  tar -C "$WORK/redis-rootfs" -c . \
    | docker import --change 'WORKDIR /data' --change 'CMD ["redis-server"]' - pemn-local/redis:7-bookworm
fi

# Debian 12's Python is 3.11.2: redis-py then also needs async-timeout.
"$PIP" download -q -d "$WORK/wheels" "torch==2.13.0" ".[s3]" "setuptools>=68" wheel "async-timeout>=4.0.3"
python3 - "$WORK" <<'PY'
import os, pathlib, re, sys
work = pathlib.Path(sys.argv[1])
for f in (work / "wheels").iterdir():
    name = f.name.split("-")[0] if f.suffix == ".whl" else re.split(r"-\d", f.name, maxsplit=1)[0]
    d = work / "index" / "simple" / re.sub(r"[-_.]+", "-", name).lower()
    d.mkdir(parents=True, exist_ok=True)
    if not (d / f.name).exists():
        os.link(f, d / f.name)
PY
if ! curl -sf "http://127.0.0.1:$PORT/simple/torch/" >/dev/null; then
  (cd "$WORK/index" && nohup python3 -m http.server "$PORT" --bind 127.0.0.1 >"$WORK/index.log" 2>&1 &)
  sleep 1
fi
cat <<EOF
export IMAGE_BUILD_ARGS="--network host --build-arg PYTHON_IMAGE=pemn-local/python:3.11-bookworm --build-arg PIP_INDEX_URL=http://127.0.0.1:$PORT/simple --build-arg TORCH_CPU_INDEX=http://127.0.0.1:$PORT/simple"
export REDIS_IMAGE=pemn-local/redis:7-bookworm
EOF
