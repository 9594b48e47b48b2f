# Shared helpers for the peer-server scripts; sourced, not run.
#
# Every peer runs pinned to CPU $PEER_CPU (default 1), under `timeout` so it
# can never outlive $PEER_SECONDS (default 900), and is stopped when the
# script exits (Ctrl-C, kill, or the bound). Installs go to $PEER_CACHE
# (default /tmp/pulsegate-peers) so repeated runs do not reinstall; missing
# Debian packages are installed with apt-get (`install_deb`).
# When $PEER_PIDFILE is set, the server's PID is written there once it
# listens, for `--server-pid`.

set -euo pipefail

PEER_CACHE=${PEER_CACHE:-/tmp/pulsegate-peers}
PEER_SECONDS=${PEER_SECONDS:-900}
PEER_CPU=${PEER_CPU:-1}

# Scripts may redefine this to remove what they created; runs on exit.
peer_cleanup() { :; }

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# install_deb PKG...: installs missing Debian packages, as root or with a
# sudo that asks no password; otherwise stops with the command to run.
install_deb() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || die "missing $*; run: sudo apt-get install -y $*"
        sudo="sudo -n"
    fi
    echo "$(basename "$0"): installing $*" >&2
    $sudo apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || die "apt-get install -y $* failed"
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most).
wait_port() {
    local i
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# run_peer NAME URL PORT CMD...: runs CMD pinned and bounded, reports its
# PID and URL, and waits for it; stops it when this script exits.
run_peer() {
    local name=$1 url=$2 port=$3
    shift 3
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use"
    fi
    taskset -c "$PEER_CPU" timeout --kill-after=5 "$PEER_SECONDS" "$@" &
    local tpid=$!
    # shellcheck disable=SC2064 # expand $tpid now
    trap "kill $tpid 2>/dev/null || true; wait $tpid 2>/dev/null || true; peer_cleanup" EXIT
    trap 'exit 130' INT TERM
    wait_port "$port" || die "$name did not start listening on port $port"
    local spid
    spid=$(pgrep -P "$tpid" | head -n 1)
    [ -n "$spid" ] || die "$name exited"
    if [ -n "${PEER_PIDFILE:-}" ]; then
        echo "$spid" > "$PEER_PIDFILE"
    fi
    echo "peer=$name url=$url pid=$spid cpu=$PEER_CPU (stops after ${PEER_SECONDS}s or on Ctrl-C)"
    wait "$tpid" || true
}
