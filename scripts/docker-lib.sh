# Sourced by natter's image scripts: a private Docker daemon for one run.
#
# docker_start starts dockerd with no bridge, no iptables/ip6tables rules, no IP forwarding
# or masquerading, its own data root (image cache, kept between runs under
# .data/deploy-check/docker), its own exec root and a unix socket in a fresh /tmp dir
# (never the system's /var/run/docker.sock), and exports DOCKER_HOST for the client.
# Containers must use --network host; nothing here creates an address outside loopback.
# docker_stop removes every container the run started and stops the daemon; callers trap it.
#
# NATTER_DOCKER_HOST=unix:///... uses an existing daemon instead (nothing is started or stopped).

DOCKERD_PID=""
DOCKERD_TMP=""

docker_start() { # data-root log-file
  local data_root=$1 log=$2
  if [ -n "${NATTER_DOCKER_HOST:-}" ]; then
    export DOCKER_HOST="$NATTER_DOCKER_HOST"
  else
    command -v dockerd >/dev/null || { echo "dockerd is missing (Debian package docker.io)" >&2; return 1; }
    mkdir -p "$data_root"
    DOCKERD_TMP=$(mktemp -d /tmp/natter-dockerd.XXXXXX)
    echo '{}' >"$DOCKERD_TMP/daemon.json"
    dockerd --config-file "$DOCKERD_TMP/daemon.json" \
      --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
      --userland-proxy=false \
      --data-root "$data_root" --exec-root "$DOCKERD_TMP/exec" \
      --host "unix://$DOCKERD_TMP/docker.sock" --pidfile "$DOCKERD_TMP/docker.pid" \
      >"$log" 2>&1 9>&- &  # fd 9: deploy-check's lock, never held by the daemon
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$DOCKERD_TMP/docker.sock"
  fi
  command -v docker >/dev/null || { echo "the docker client is missing (Debian package docker.io)" >&2; return 1; }
  local i
  for i in $(seq 1 60); do
    if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then return 0; fi
    if [ -n "$DOCKERD_PID" ] && ! kill -0 "$DOCKERD_PID" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "dockerd did not come up; its log ($log):" >&2
  tail -n 30 "$log" >&2 || true
  return 1
}

docker_stop() {
  if [ -n "${DOCKER_HOST:-}" ] && command -v docker >/dev/null; then
    local ids
    ids=$(docker ps -aq --filter label=natter-deploy-check=1 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 40); do
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
  fi
  if [ -n "$DOCKERD_TMP" ]; then
    # dockerd leaves its default network namespace mounted under the exec root
    local mnt
    for mnt in $(awk -v d="$DOCKERD_TMP/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
      umount -l "$mnt" 2>/dev/null || true
    done
    rm -rf "$DOCKERD_TMP"
    DOCKERD_TMP=""
  fi
}
