#!/usr/bin/env bash
# Builds the three natter images from prebuilt binaries (the Dockerfile's *-prebuilt
# targets) on top of BASE: natter-edge:TAG, natter-archiver:TAG, natter-filestore:TAG.
#   scripts/docker-images.sh BASE PROFILE TAG
# PROFILE is the cargo profile directory to pack (release, or debug where `just test` has
# just built it). Needs DOCKER_HOST. The classic builder parses the whole Dockerfile, so the
# from-source targets' syntax is checked too, though they are not built here.
set -euo pipefail
cd "$(dirname "$0")/.."
base=$1 profile=$2 tag=$3
for svc in edge archiver filestore bots stream; do
  bin="target/$profile/natter-$svc"
  [ -x "$bin" ] || { echo "docker-images: $bin is missing: build it first (cargo build --bins, --release for release)" >&2; exit 1; }
done
for svc in edge archiver filestore bots; do
  # The classic builder (no buildx here); its deprecation notice is shown only on failure.
  if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet --target "$svc-prebuilt" \
    --build-arg BASE="$base" --build-arg PROFILE="$profile" \
    --label org.opencontainers.image.revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "natter-$svc:$tag" . 2>&1); then
    echo "$out" >&2
    echo "docker-images: building natter-$svc failed" >&2
    exit 1
  fi
  # The prebuilt stages pass through when a binary is missing from the context (so that a
  # from-source build can use them); here it must be in the image.
  docker run --rm --network none --entrypoint "/usr/local/bin/natter-$svc" "natter-$svc:$tag" --version >/dev/null \
    || { echo "docker-images: natter-$svc:$tag has no working /usr/local/bin/natter-$svc" >&2; exit 1; }
  echo "natter-$svc:$tag $(docker image inspect --format '{{.Size}}' "natter-$svc:$tag" | awk '{printf "%.0f MB", $1/1e6}')"
done
# Images replaced by this build (untagged now) would pile up in the data root, run after run.
docker image prune --force >/dev/null
