#!/usr/bin/env bash
# A private Docker engine for tests and CI, where none runs and no image registry is
# reachable (needs root):  eval "$(deploy/docker_engine.sh start)"  ...  deploy/docker_engine.sh stop
# start: installs docker.io, docker-compose and debootstrap if missing, starts dockerd on its
#        own socket under $FEDCMR_DOCKER_DIR (default /tmp/fedcmr-docker), builds the base
#        image `fedcmr-base` (Debian bookworm + python3) with debootstrap once, and prints the
#        environment to use it (DOCKER_HOST, FEDCMR_BASE_IMAGE).
# stop:  stops that dockerd by its pid.
set -euo pipefail
dir=${FEDCMR_DOCKER_DIR:-/tmp/fedcmr-docker}
sock="unix://$dir/docker.sock"
log() { echo "docker_engine: $*" >&2; }

start() {
  mkdir -p "$dir"
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null \
     || ! command -v debootstrap >/dev/null; then
    log "installing docker.io docker-compose debootstrap"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      docker.io docker-compose debootstrap) >"$dir/apt.log" 2>&1 || {
      log "could not install the Docker packages (see $dir/apt.log)"; return 1; }
  fi
  if ! DOCKER_HOST=$sock docker info >/dev/null 2>&1; then
    log "starting dockerd on $sock"
    dockerd --host "$sock" --data-root "$dir/root" --exec-root "$dir/exec" \
      --pidfile "$dir/docker.pid" >"$dir/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
      DOCKER_HOST=$sock docker info >/dev/null 2>&1 && break
      sleep 1
    done
    DOCKER_HOST=$sock docker info >/dev/null 2>&1 || {
      log "dockerd did not start (see $dir/dockerd.log)"; return 1; }
  fi
  if ! DOCKER_HOST=$sock docker image inspect fedcmr-base >/dev/null 2>&1; then
    log "building the base image fedcmr-base with debootstrap (about a minute)"
    rm -rf "$dir/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$dir/rootfs" >"$dir/debootstrap.log" 2>&1 || {
      log "debootstrap failed (see $dir/debootstrap.log)"; return 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/ca-certificates.crt"
    [ -f /etc/pip.conf ] && cp /etc/pip.conf "$dir/rootfs/etc/pip.conf"
    tar -C "$dir/rootfs" -c . | DOCKER_HOST=$sock docker import - fedcmr-base >/dev/null
    rm -rf "$dir/rootfs"
  fi
  echo "export DOCKER_HOST=$sock FEDCMR_BASE_IMAGE=fedcmr-base"
}

stop() {
  if [ -f "$dir/docker.pid" ]; then
    pid=$(cat "$dir/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    log "dockerd ($pid) stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
