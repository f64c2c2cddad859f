#!/usr/bin/env bash
# `just deploy minikube|okteto`: build the images, apply an overlay, wait for the rollouts,
# print where natter answers. Nothing here is pretended: without `minikube`/`kubectl` or
# `okteto`, or without a running cluster, it stops and says what is missing.
#
#   minikube  images built inside the minikube node from source (`minikube image build`,
#             Dockerfile targets edge/archiver/filestore), overlay k8s/overlays/minikube
#             in namespace natter, kubectl context "minikube" (never another cluster).
#             NATTER_DEPLOY_PREBUILT=1 packs target/release instead (cargo build --release
#             here; the node's docker builds the *-prebuilt targets on debian:bookworm-slim;
#             the image build fails if this machine's glibc is newer than bookworm's).
#   okteto    `okteto deploy --wait` with okteto.yml (Okteto builds the images from source
#             and applies k8s/overlays/okteto in your current Okteto namespace).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "deploy: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is not installed; $2"; }
TIMEOUT="${NATTER_DEPLOY_TIMEOUT:-10m}"

deploy_minikube() {
  need minikube "install it (https://minikube.sigs.k8s.io/docs/start/) and run: minikube start --cpus 4 --memory 8g --kubernetes-version v1.31.0"
  need kubectl "install kubectl (or use 'minikube kubectl --')"
  minikube status >/dev/null 2>&1 || die "minikube is not running: minikube start --cpus 4 --memory 8g --kubernetes-version v1.31.0"
  local k=(kubectl --context minikube)
  for addon in ingress metrics-server; do
    if ! minikube addons list 2>/dev/null | grep -E "^\| *$addon *\|" | grep -q enabled; then
      echo "deploy: enabling the minikube addon $addon (Ingress for /chat, /images, /files; CPU metrics for the edge HPA)"
      minikube addons enable "$addon"
    fi
  done

  if [ "${NATTER_DEPLOY_PREBUILT:-0}" = 1 ]; then
    cargo build --release --bins
    for svc in edge archiver filestore bots; do
      echo "deploy: building natter-$svc:dev from target/release in the minikube node"
      (eval "$(minikube docker-env)" && DOCKER_BUILDKIT=0 docker build -q --target "$svc-prebuilt" \
        --build-arg BASE=debian:bookworm-slim --build-arg PROFILE=release -t "natter-$svc:dev" .)
    done
  else
    for svc in edge archiver filestore bots; do
      echo "deploy: building natter-$svc:dev from source in the minikube node (the first build compiles the workspace)"
      minikube image build -t "natter-$svc:dev" --build-opt="target=$svc" .
    done
  fi

  "${k[@]}" apply -k k8s/overlays/minikube
  # Same tags as the last deploy: restart so the pods pick up the images just built.
  "${k[@]}" -n natter rollout restart deployment/edge deployment/archiver deployment/filestore deployment/bots
  for r in statefulset/nats statefulset/postgres deployment/archiver deployment/filestore deployment/bots deployment/edge; do
    "${k[@]}" -n natter rollout status "$r" --timeout="$TIMEOUT" \
      || { "${k[@]}" -n natter get pods,pvc; die "$r did not roll out within $TIMEOUT"; }
  done
  local ip
  ip=$(minikube ip)
  cat <<MSG

natter is up on minikube (namespace natter):
  chat (WebSocket)   ws://$ip/chat
  uploads (REST)     http://$ip/images   http://$ip/files
  metrics            kubectl --context minikube -n natter port-forward deploy/edge 8080  -> http://127.0.0.1:8080/metrics
  NATS monitoring    kubectl --context minikube -n natter port-forward sts/nats 8222
(with the docker driver on macOS/Windows, run 'minikube tunnel' and use 127.0.0.1 instead of $ip)
MSG
}

deploy_okteto() {
  need okteto "install the Okteto CLI (https://www.okteto.com/docs/get-started/install-okteto-cli/) and run: okteto context use <your Okteto URL>"
  okteto deploy --wait --timeout "$TIMEOUT"
  echo
  echo "natter is up on Okteto; its public endpoints (chat at /chat, uploads at /images and /files):"
  okteto endpoints
}

case "${1:-}" in
  minikube) deploy_minikube ;;
  okteto) deploy_okteto ;;
  *) die "usage: just deploy minikube|okteto" ;;
esac
