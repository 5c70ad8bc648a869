#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 (python3 + python3-venv) for hosts that cannot pull
# the official python image: debootstrap --variant=minbase, then `docker import`. Cached: does nothing when the
# tag already exists (REBUILD=1 forces a rebuild).
#
#   docker/build-base.sh [TAG]          # default realnvp-base:bookworm
#   DOCKER=/usr/bin/docker DEBIAN_MIRROR=http://deb.debian.org/debian docker/build-base.sh
#
# Needs root and debootstrap (installed with apt-get when missing).
set -euo pipefail

TAG=${1:-realnvp-base:bookworm}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
PACKAGES=python3,python3-venv

log() { printf '[build-base] %s\n' "$*" >&2; }

# The host's own Debian mirror for SUITE (deb822 or one-line sources), else the public one.
host_mirror() {
    local uri
    uri=$(awk -v suite="$SUITE" '
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uris; exit } }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [[ -z $uri && -r /etc/apt/sources.list ]]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ${REBUILD:-0} != 1 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists (REBUILD=1 to rebuild)"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
ROOT=$(mktemp -d /var/tmp/realnvp-base.XXXXXX)
cleanup() {
    # debootstrap mounts /proc and /sys inside the target while it runs; never leave them mounted.
    local mountpoint
    awk -v root="$ROOT" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mountpoint; do umount -l "$mountpoint" || true; done
    rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT

log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
start=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -n 30 "$ROOT.log" >&2
    rm -f "$ROOT.log"
    exit 1
}
rm -f "$ROOT.log"
# Slim it: package caches and lists, documentation, man pages (the image needs none of them).
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/var/log/*.log
log "importing as $TAG"
tar --numeric-owner --exclude=./proc/* --exclude=./sys/* -C "$ROOT" -c . |
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE" - "$TAG" >/dev/null
log "$TAG built in $((SECONDS - start))s: $("$DOCKER" run --rm --network none "$TAG" python3 --version)"
