#!/usr/bin/env bash
# Build the images tfdeploy's docker runtime and tests use, with no registry access:
#   tfdeploy/base:bookworm            Debian rootfs from debootstrap, via `docker import`
#   tfdeploy/serving-embedded:latest  tfdeploy-model-server with the official image's
#                                     contract (docker/embedded.Dockerfile)
# Python packages come from wheels downloaded on the host (pip inside containers cannot
# reach the index here). Existing images are reused; pass --rebuild to rebuild them.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${TFDEPLOY_BASE_IMAGE:-tfdeploy/base:bookworm}
EMBEDDED_IMAGE=${TFDEPLOY_EMBEDDED_IMAGE:-tfdeploy/serving-embedded:latest}
SUITE=${TFDEPLOY_DEBIAN_SUITE:-bookworm}
MIRROR=${TFDEPLOY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-.venv/bin/python}
CACHE=.cache/docker
REBUILD=${1:-}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Progress: every step says what it does, and long quiet ones say every 15 s that they
# are still at it (a first build takes minutes).
START=$SECONDS
say() { echo "==> [$((SECONDS - START))s] $*"; }
quietly() {  # quietly LABEL CMD...: run CMD, its output hidden unless it fails
  local label=$1 log pid t0=$SECONDS n=0; shift
  log=$(mktemp /tmp/tfdeploy-build.XXXXXX)
  "$@" >"$log" 2>&1 & pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1; n=$((n + 1))
    if [ $((n % 15)) -eq 0 ] && kill -0 "$pid" 2>/dev/null; then
      echo "    ... $label ($((SECONDS - t0))s)"
    fi
  done
  if ! wait "$pid"; then cat "$log" >&2; rm -f "$log"; echo "failed: $label" >&2; exit 1; fi
  rm -f "$log"
}

if [ "$REBUILD" = "--rebuild" ] || ! have_image "$BASE_IMAGE"; then
  say "$BASE_IMAGE: debootstrap $SUITE (a Debian root filesystem; a few minutes)"
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
  rootfs=$(mktemp -d /tmp/tfdeploy-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  quietly "debootstrap $SUITE" debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$MIRROR"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "$BASE_IMAGE: docker import"
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
fi

# The embedded image holds tfdeploy's own code: rebuild it whenever that code changes.
SOURCE_HASH=$(cat pyproject.toml docker/embedded.Dockerfile docker/tf_serving_entrypoint.sh \
  $(find tfdeploy -name '*.py' | LC_ALL=C sort) | sha256sum | cut -c1-16)
current_hash=$(docker image inspect -f '{{ index .Config.Labels "tfdeploy.source-hash" }}' \
  "$EMBEDDED_IMAGE" 2>/dev/null || true)

if [ "$REBUILD" = "--rebuild" ] || [ "$current_hash" != "$SOURCE_HASH" ]; then
  say "$EMBEDDED_IMAGE: tfdeploy's code changed (or no image yet): building it"
  say "$EMBEDDED_IMAGE: wheels for the image's Python (tensorflow is ~600 MB the first time)"
  img_py=$(docker run --rm "$BASE_IMAGE" python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  host_py=$($PY -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  mkdir -p "$CACHE/wheels" "$CACHE/app"
  rm -f "$CACHE"/app/*.whl "$CACHE"/wheels/tfdeploy-*.whl
  quietly "building the tfdeploy wheel" $PY -m pip wheel -q --no-deps --wheel-dir "$CACHE/app" .
  # dependencies only (their layer is cached by docker while they do not change)
  $PY -c 'try:
    import tomllib
except ImportError:  # Python 3.10: the copy pip ships
    from pip._vendor import tomli as tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > "$CACHE/requirements.txt"
  if [ "$img_py" = "$host_py" ]; then
    quietly "downloading wheels" $PY -m pip download -q --only-binary=:all: \
      --dest "$CACHE/wheels" -r "$CACHE/requirements.txt"
  else
    quietly "downloading wheels" $PY -m pip download -q --only-binary=:all: \
      --python-version "$img_py" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
      --dest "$CACHE/wheels" -r "$CACHE/requirements.txt"
  fi
  cp docker/tf_serving_entrypoint.sh "$CACHE/"
  say "$EMBEDDED_IMAGE: docker build"
  quietly "docker build" docker build -q -f docker/embedded.Dockerfile \
    --build-arg BASE="$BASE_IMAGE" --label "tfdeploy.source-hash=$SOURCE_HASH" \
    -t "$EMBEDDED_IMAGE" "$CACHE"
  # the previous build of ours, now untagged, goes (other images are left alone)
  docker image prune -f --filter "label=tfdeploy.source-hash" >/dev/null
fi
echo "images ready ($((SECONDS - START))s): $BASE_IMAGE $EMBEDDED_IMAGE"
