#!/usr/bin/env bash
# The official OpenAI Python SDK against `mediactl serve`'s OpenAI drop-ins: starts `serve` on a
# free loopback port with a fresh data directory (its simulator, never a real provider), makes the
# users the checks need (one that cannot pay, one with a daily limit), runs
# scripts/openai_sdk_check.py and stops `serve` whatever happens. scripts/test.sh runs it.
#
#     scripts/openai_sdk_check.sh [MEDIACTL]   (default: the workspace's debug build of mediactl)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
MEDIACTL=${1:-${CARGO_TARGET_DIR:-target}/debug/mediactl}
. scripts/local_serve.sh
trap stop_serve EXIT
trap 'exit 1' INT TERM
fail() {
    echo "openai-sdk: $*" >&2
    echo "openai-sdk: 0 passed, 1 failed"
    exit 1
}
[ -x "$MEDIACTL" ] || fail "no mediactl at $MEDIACTL (cargo build -p mediactl first)"

mediactl() { "$MEDIACTL" --data-dir "$DATA" "$@"; }
start_serve "$MEDIACTL" "$DATA/serve.log" || fail "serve did not start"

# Next to the running server, as the README says admin commands work.
POOR=$(mediactl users create --credits 1 | sed -n 's/^api_key: //p')
LIMITED=
if mediactl users limit --help >/dev/null 2>&1; then
    created=$(mediactl users create --credits 100)
    mediactl users limit "$(sed -n 's/^user_id: //p' <<<"$created")" --daily 2 >/dev/null
    LIMITED=$(sed -n 's/^api_key: //p' <<<"$created")
else
    echo "(no \`mediactl users limit\`: the 429 check is left out)"
fi

timeout 300 "$PYTHON" scripts/openai_sdk_check.py "http://127.0.0.1:$PORT" "$KEY" "$POOR" ${LIMITED:+"$LIMITED"}
