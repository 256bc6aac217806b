# Sourced by the checks that need a running `mediactl serve` (scripts/schemathesis.sh,
# scripts/openai_sdk_check.sh): one way to start it on a free loopback port with a fresh data
# directory and the built-in provider simulator (no real provider, whatever the environment
# says), read the dev user's key it prints once, and stop it whatever happens.
#
#     start_serve MEDIACTL LOG [serve flags...]   sets DATA, PORT, BASE, KEY, SERVE_PID
#
# The caller's EXIT trap must call stop_serve. Needs .venv's python for a free port.

DATA=$(mktemp -d)
SERVE_PID=
stop_serve() {
    if [ -n "$SERVE_PID" ]; then
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}

start_serve() {
    local mediactl=$1 log=$2
    shift 2
    PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    BASE="http://127.0.0.1:$PORT"
    env -u OPENAI_API_KEY -u SUNO_API_KEY -u KLING_API_KEY -u KLING_ACCESS_KEY -u KLING_SECRET_KEY \
        -u MEDIACTL_TABLE -u MEDIACTL_PRIVATE_CACHE -u MEDIACTL_PRICING RUST_LOG=warn \
        "$mediactl" --data-dir "$DATA" serve --addr "127.0.0.1:$PORT" "$@" >"$log" 2>&1 &
    SERVE_PID=$!
    KEY=
    for _ in $(seq 300); do
        KEY=$(sed -n 's/^API key (shown once): //p' "$log")
        [ -n "$KEY" ] && return 0
        if ! kill -0 "$SERVE_PID" 2>/dev/null; then
            echo "mediactl serve stopped; its output:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "mediactl serve printed no API key within 30 s" >&2
    return 1
}
