#!/usr/bin/env bash
# Makes the Debian base for the prebuilt image path where no base image can be pulled:
# mmdebstrap builds a bookworm root file system (essential packages, ca-certificates, tini)
# from the Debian archive, cached as a tarball under .tools/deploy/, and `docker import`s
# it. Prints the image reference. Needs DOCKER_HOST (scripts/docker-lib.sh) and, the first
# time, mmdebstrap and network access to Debian's archive.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
PACKAGES=ca-certificates,tini
CACHE="${NATTER_DEPLOY_CACHE:-.tools/deploy}"
key=$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
tarball="$CACHE/base-$SUITE-$key.tar"
image="natter-base:$SUITE-$key"

mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing (Debian package mmdebstrap)" >&2; exit 1; }
  echo "docker-base: building a $SUITE root file system with mmdebstrap (cached in $tarball)" >&2
  mmdebstrap --quiet --format=tar --variant=essential --include="$PACKAGES" "$SUITE" "$tarball.part" \
    "deb http://deb.debian.org/debian $SUITE main" \
    "deb http://deb.debian.org/debian $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main" >&2
  mv "$tarball.part" "$tarball"
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  docker import --message "natter base: Debian $SUITE essential + $PACKAGES (mmdebstrap)" "$tarball" "$image" >/dev/null
fi
echo "$image"
