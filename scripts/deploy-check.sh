#!/usr/bin/env bash
# `just deploy-check` (and the end of `just test`): everything about the deployment that can
# be checked without a Kubernetes cluster, and what it cannot, said plainly.
#
#  1. render every overlay (kubectl kustomize), plus okteto with the filestore-shared
#     component;
#  2. validate each object against the Kubernetes $K8S_VERSION schemas
#     (kubernetes-validate --strict; any warning fails);
#  3. check the rendered objects against each other and against the binaries
#     (deploy/check_manifests.py: selectors, ports, references, NATS routes, grace
#     periods, security, and `<binary> --check-config` with each container's flags and
#     env), then prove that checker fails on broken copies (--self-test);
#  4. build the three images from the binaries of target/$PROFILE on a Debian base made
#     with mmdebstrap, in a private dockerd (no bridge, no iptables; loopback only);
#  5. run them against real nats-server and Postgres (natter-deploy-check's deploy_images):
#     chat round trip across two edges, image and file upload, archive in Postgres, every
#     metric the dashboard and alerts use, JSON logs, drain on SIGTERM through tini.
#
# Not checked here: `kubectl apply`, scheduling, volumes, Ingress controllers, rollouts —
# those happen only on a real minikube or Okteto (`just deploy ...`).
#
# Environment: NATTER_DEPLOY_PROFILE (debug; `release` packs target/release),
# NATTER_K8S_VERSION, NATTER_DOCKER_HOST (use an existing daemon), NATTER_DEPLOY_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/docker-lib.sh

K8S_VERSION="${NATTER_K8S_VERSION:-1.31.0}"
PROFILE="${NATTER_DEPLOY_PROFILE:-debug}"
VALIDATE_VERSION=1.37.0
TOOLS="${NATTER_DEPLOY_CACHE:-.tools/deploy}"
OUT=.data/deploy-check
TAG=check

mkdir -p "$OUT/rendered" "$TOOLS"
exec 9>"$OUT/lock"
flock -w 900 9 || { echo "deploy-check: another run holds $OUT/lock" >&2; exit 1; }
t0=$(date +%s)
step() { printf '\n== deploy-check [%3ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
die() { echo "deploy-check: FAILED: $*" >&2; exit 1; }

step "tools"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing ${missing[*]}: install them (sudo apt-get install ${missing[*]}) and rerun"
  fi
fi
command -v kubectl >/dev/null || die "kubectl is missing (it renders the overlays: kubectl kustomize)"
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] \
  || ! "$TOOLS/venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$VALIDATE_VERSION"; then
  echo "installing kubernetes-validate $VALIDATE_VERSION and PyYAML (PyPI) into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION" "pyyaml>=6"
fi
# Where cargo put the binaries (CARGO_TARGET_DIR moves it); the image build context
# takes them from ./target/$PROFILE, as the Dockerfile's prebuilt targets expect.
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | "$TOOLS/venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') \
  || die "cargo metadata"
BIN_DIR="$target_dir/$PROFILE"
for svc in edge archiver filestore bots stream; do
  [ -x "$BIN_DIR/natter-$svc" ] || die "$BIN_DIR/natter-$svc is missing: run cargo build --bins first"
done
if [ "$(realpath "$target_dir")" != "$(realpath -m target)" ]; then
  echo "binaries from $BIN_DIR, copied to target/$PROFILE for the image build context"
  mkdir -p "target/$PROFILE"
  for svc in edge archiver filestore bots stream; do cp -f "$BIN_DIR/natter-$svc" "target/$PROFILE/"; done
fi

step "Cargo.lock is complete (the from-source image build runs cargo build --locked)"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "skipped: not a git checkout"
elif [ -n "$(git status --porcelain -- Cargo.toml '*/Cargo.toml')" ]; then
  echo "skipped: Cargo.toml files have local changes (checked on a clean checkout, as in CI)"
elif ! git diff --quiet -- Cargo.lock 2>/dev/null; then
  git diff --stat -- Cargo.lock
  die "Cargo.lock differs from the one committed: cargo updated it, so the committed lock is incomplete and 'cargo build --locked' in the Dockerfile would fail"
else
  echo "Cargo.lock matches the manifests"
fi

step "render the overlays (kubectl kustomize)"
rm -f "$OUT/rendered/"*.yaml
for overlay in k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$OUT/rendered/$name.yaml" || die "kustomize $overlay"
  echo "$name: $(grep -c '^kind:' "$OUT/rendered/$name.yaml") objects"
done
variant="$OUT/variants/okteto-filestore-shared"
mkdir -p "$variant"
cat >"$variant/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../k8s/overlays/okteto
components:
  - ../../../../k8s/components/filestore-shared
YAML
kubectl kustomize "$variant" >"$OUT/rendered/okteto-filestore-shared.yaml" || die "kustomize $variant"
echo "okteto + components/filestore-shared: $(grep -c '^kind:' "$OUT/rendered/okteto-filestore-shared.yaml") objects"

step "schema validation against Kubernetes $K8S_VERSION (kubernetes-validate --strict)"
for f in "$OUT/rendered/"*.yaml; do
  out=$("$TOOLS/venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$f" 2>&1) || { echo "$out"; die "schema validation of $f"; }
  bad=$(grep -v ' passed for resource ' <<<"$out" || true)
  [ -z "$bad" ] || { echo "$bad"; die "kubernetes-validate reported warnings for $f"; }
  echo "$(basename "$f"): $(grep -c ' passed for resource ' <<<"$out") objects valid"
done

step "cross-object and binary checks (deploy/check_manifests.py, binaries of $BIN_DIR)"
"$TOOLS/venv/bin/python" deploy/check_manifests.py --bin-dir "$BIN_DIR" "$OUT/rendered/"*.yaml \
  --build-files Dockerfile okteto.yml "$OUT/rendered/okteto.yaml"
step "the checker catches broken manifests (--self-test)"
"$TOOLS/venv/bin/python" deploy/check_manifests.py --bin-dir "$BIN_DIR" --self-test "$OUT/rendered/minikube.yaml"

step "private dockerd (no bridge, no iptables; data root $OUT/docker)"
trap docker_stop EXIT
trap 'exit 130' INT TERM
docker_start "$PWD/$OUT/docker" "$OUT/dockerd.log" || die "dockerd"
docker version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}}'

step "Debian base image (mmdebstrap, cached in $TOOLS)"
base=$(scripts/docker-base.sh) || die "base image"
echo "$base"

step "the Dockerfile parses as a whole (a broken from-source stage is refused)"
broken=$(sed 's/^RUN cargo build/RUNX cargo build/' Dockerfile)
if out=$(DOCKER_BUILDKIT=0 docker build -q - <<<"$broken" 2>&1); then die "a broken Dockerfile was accepted"; fi
grep -q 'unknown instruction' <<<"$out" || die "unexpected answer to a broken Dockerfile: $out"
echo "refused: $(tail -n1 <<<"$out")"

step "images from target/$PROFILE (Dockerfile *-prebuilt targets)"
scripts/docker-images.sh "$base" "$PROFILE" "$TAG" || die "image build"

# --workspace: the same feature set as `cargo build --bins`, so nothing is rebuilt; only
# natter-deploy-check has a test target of this name.
step "the images against real nats-server and Postgres (cargo test --test deploy_images)"
NATTER_IMAGE_EDGE="natter-edge:$TAG" NATTER_IMAGE_ARCHIVER="natter-archiver:$TAG" \
  NATTER_IMAGE_FILESTORE="natter-filestore:$TAG" NATTER_IMAGE_BOTS="natter-bots:$TAG" \
  cargo test --workspace --test deploy_images -- --test-threads 1 || die "image smoke test"

step "done: rendered, validated, cross-checked, images built and run. Not exercised here: kubectl apply and rollouts (only on a real minikube/Okteto)"
