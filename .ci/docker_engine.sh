# Sourced by .ci/run (under `set -euo pipefail`), or by hand:
#
#     source .ci/docker_engine.sh && start_docker_engine
#     export DOCKER_HOST=unix://$AGENTRL_DOCKER_SOCKET
#
# Defines start_docker_engine: installs Debian's docker.io if dockerd is missing, then starts a
# private dockerd in the background -- its own socket, data root, exec root and pidfile, so it
# never touches (or is confused with) a system Docker -- and waits until it answers. Idempotent:
# an engine already answering on the socket is reused as is.
#
# The engine runs with what works on a CI box without a registry or a network of its own:
#   --storage-driver=vfs   no overlayfs/devicemapper needed (layers are plain copies: keep
#                          images small; the sandbox image is a few tens of MB)
#   --bridge=none --iptables=false --ip-masq=false
#                          no docker0 bridge, no NAT rules: sandbox containers run with
#                          network_mode=none anyway (Limits.network=False)
# Memory and pids limits are enforced by this engine through the host's cgroups (v1 or v2).
#
# Environment (all optional):
#   AGENTRL_DOCKER_SOCKET  unix socket path        (default /run/agentrl-docker.sock)
#   AGENTRL_DOCKER_ROOT    data root (images, containers; default /var/lib/agentrl-docker)
#   AGENTRL_DOCKER_EXEC    exec root (runtime state; default /run/agentrl-docker)
#   AGENTRL_DOCKER_LOG     dockerd log file        (default /tmp/agentrl-dockerd.log)
#   AGENTRL_DOCKER_WAIT_S  seconds to wait for the engine to answer (default 60)

AGENTRL_DOCKER_SOCKET=${AGENTRL_DOCKER_SOCKET:-/run/agentrl-docker.sock}
AGENTRL_DOCKER_ROOT=${AGENTRL_DOCKER_ROOT:-/var/lib/agentrl-docker}
AGENTRL_DOCKER_EXEC=${AGENTRL_DOCKER_EXEC:-/run/agentrl-docker}
AGENTRL_DOCKER_LOG=${AGENTRL_DOCKER_LOG:-/tmp/agentrl-dockerd.log}
AGENTRL_DOCKER_WAIT_S=${AGENTRL_DOCKER_WAIT_S:-60}
export AGENTRL_DOCKER_SOCKET

_agentrl_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# True when the engine on our socket answers an API call.
_agentrl_docker_answers() {
    [ -S "$AGENTRL_DOCKER_SOCKET" ] || return 1
    _agentrl_sudo docker -H "unix://$AGENTRL_DOCKER_SOCKET" version --format '{{.Server.Version}}' \
        >/dev/null 2>&1
}

_agentrl_install_docker() {
    if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
        return 0
    fi
    echo "docker engine: dockerd not found; installing Debian's docker.io"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "docker engine: no apt-get here; install a Docker engine (dockerd) by hand" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! _agentrl_sudo apt-get install -y --no-install-recommends docker.io; then
        echo "docker engine: apt-get install failed; refreshing the package lists and retrying"
        _agentrl_sudo apt-get update
        _agentrl_sudo apt-get install -y --no-install-recommends docker.io
    fi
    command -v dockerd >/dev/null 2>&1 || { echo "docker engine: dockerd still missing" >&2; return 1; }
}

start_docker_engine() {
    echo "docker engine: socket $AGENTRL_DOCKER_SOCKET"
    if _agentrl_docker_answers; then
        echo "docker engine: already running on $AGENTRL_DOCKER_SOCKET (reusing it)"
        return 0
    fi
    _agentrl_install_docker

    local pidfile="$AGENTRL_DOCKER_EXEC.pid"
    if [ -f "$pidfile" ]; then
        local old
        old=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
            echo "docker engine: dockerd pid $old is alive but not answering yet; waiting for it"
        else
            echo "docker engine: removing stale pidfile $pidfile"
            _agentrl_sudo rm -f "$pidfile" "$AGENTRL_DOCKER_SOCKET"
        fi
    fi

    if ! _agentrl_docker_answers && ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
        _agentrl_sudo mkdir -p "$AGENTRL_DOCKER_ROOT" "$AGENTRL_DOCKER_EXEC" "$(dirname "$AGENTRL_DOCKER_SOCKET")"
        echo "docker engine: starting dockerd (vfs storage, no bridge, no iptables); log $AGENTRL_DOCKER_LOG"
        # setsid + nohup: the engine outlives this shell (CI step, or the developer's terminal).
        _agentrl_sudo setsid nohup dockerd \
            --host "unix://$AGENTRL_DOCKER_SOCKET" \
            --data-root "$AGENTRL_DOCKER_ROOT" \
            --exec-root "$AGENTRL_DOCKER_EXEC" \
            --pidfile "$pidfile" \
            --storage-driver=vfs \
            --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
            --userland-proxy=false \
            >"$AGENTRL_DOCKER_LOG" 2>&1 </dev/null &
    fi

    local waited=0
    until _agentrl_docker_answers; do
        if [ "$waited" -ge "$((AGENTRL_DOCKER_WAIT_S * 2))" ]; then
            echo "docker engine: dockerd did not answer on $AGENTRL_DOCKER_SOCKET within ${AGENTRL_DOCKER_WAIT_S}s" >&2
            echo "---- last 40 lines of $AGENTRL_DOCKER_LOG ----" >&2
            tail -n 40 "$AGENTRL_DOCKER_LOG" >&2 || true
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    echo "docker engine: up after ~$((waited / 2))s: $(_agentrl_sudo docker -H "unix://$AGENTRL_DOCKER_SOCKET" version --format 'server {{.Server.Version}}, API {{.Server.APIVersion}}')"
}

# Stops the engine started by start_docker_engine (for developers; CI just exits).
stop_docker_engine() {
    local pidfile="$AGENTRL_DOCKER_EXEC.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "docker engine: stopping dockerd pid $(cat "$pidfile")"
        _agentrl_sudo kill "$(cat "$pidfile")"
    else
        echo "docker engine: not running"
    fi
}

# Run as a script (`bash .ci/docker_engine.sh start|stop`) as well as sourced.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  "${1:-start}_docker_engine"
fi
