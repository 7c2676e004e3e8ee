#!/usr/bin/env bash
# make image-test: build the image and run tests/image against it with a real dockerd.
# Installs docker.io and debootstrap from Debian if missing, starts dockerd if it is not
# running (and stops only what it started), builds the base image with debootstrap when no
# registry is reachable (cached in $CACHE), then the image, then the tests.
#   usage: tests/image/run.sh PYTEST [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${SIDKEYD_IMAGE_CACHE:-/var/cache/sidkeyd-test/image-base}
BASE_TAG=sidkeyd-test/debian:bookworm-minbase
IMAGE_TAG=${SIDKEYD_IMAGE:-sidkeyd:test}
BASE_MAX_AGE_DAYS=30  # then debootstrap again, for Debian's security updates
export DOCKER_BUILDKIT=0  # the classic builder: Debian's docker.io has no buildx

log() { echo "image-test: $*" >&2; }

install_missing() {
    local packages=()
    command -v dockerd >/dev/null || packages+=(docker.io)
    command -v debootstrap >/dev/null || packages+=(debootstrap)
    command -v docker-compose >/dev/null || packages+=(docker-compose)
    if ((${#packages[@]})); then
        log "installing ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" </dev/null >/dev/null
    fi
}

STARTED_DOCKERD=
start_dockerd() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    log "starting dockerd"
    dockerd >/tmp/sidkeyd-image-test-dockerd.log 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
        sleep 1
    done
    log "dockerd did not start:"; tail -20 /tmp/sidkeyd-image-test-dockerd.log >&2
    exit 1
}

stop_dockerd() {
    if [[ -n $STARTED_DOCKERD ]]; then
        log "stopping the dockerd it started"
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        wait "$STARTED_DOCKERD" 2>/dev/null || true
    fi
}

# No registry here: a Debian bookworm minbase made with debootstrap, imported as an image.
base_image() {
    local tarball=$CACHE/bookworm-minbase.tar
    mkdir -p "$CACHE"
    if [[ ! -s $tarball ]] || [[ -n $(find "$tarball" -mtime +"$BASE_MAX_AGE_DAYS") ]]; then
        log "debootstrap bookworm into $CACHE"
        local rootfs
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        debootstrap --variant=minbase bookworm "$rootfs" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
        tar -C "$rootfs" -c . >"$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        docker rmi "$BASE_TAG" >/dev/null 2>&1 || true
    fi
    if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        log "importing $tarball as $BASE_TAG"
        docker import - "$BASE_TAG" <"$tarball" >/dev/null
    fi
}

install_missing
start_dockerd
trap stop_dockerd EXIT
base_image
log "building $IMAGE_TAG from $BASE_TAG (wheels from make wheels)"
docker build --quiet --build-arg BASE_IMAGE="$BASE_TAG" -t "$IMAGE_TAG" . >/dev/null
# Earlier builds' images, untagged by this one (every layer of ours carries the label).
docker image prune --force --filter label=org.opencontainers.image.title=sidkeyd >/dev/null
SIDKEYD_IMAGE=$IMAGE_TAG "$@" tests/image
