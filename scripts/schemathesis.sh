#!/usr/bin/env bash
# The contract from outside: schemathesis generates requests from openapi.yaml, as a running
# `mediactl serve` serves it (GET /openapi.json), and checks every answer against it: no 5xx, and
# the status code, content type, headers and body as documented. scripts/test.sh runs it after the cargo
# tests, on the binary they built; it runs alone too:
#
#     scripts/schemathesis.sh [MEDIACTL]       (default target/debug/mediactl)
#
# serve runs on a free loopback port with a fresh data directory and the built-in provider
# simulator (no real provider, whatever the environment says), as the dev user it creates (the
# key it prints once), and is stopped whatever happens. Bounded: SCHEMATHESIS_MAX_EXAMPLES cases
# (20) per operation and phase, and SCHEMATHESIS_TIME_LIMIT seconds (170) for the whole run;
# SCHEMATHESIS_EXTRA_ARGS adds options (split on spaces), e.g. "--report har". schemathesis leaves
# out GET /openapi.json, the document it loads (shared/src/http/contract.rs tests that route).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
MEDIACTL=${1:-target/debug/mediactl}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
TIME_LIMIT=${SCHEMATHESIS_TIME_LIMIT:-170}
LOG=target/schemathesis.log
SERVE_LOG=target/schemathesis-serve.log

if [ ! -x "$MEDIACTL" ]; then
    echo "schemathesis: $MEDIACTL is not built (cargo build -p mediactl)" >&2
    exit 1
fi
mkdir -p target
. scripts/local_serve.sh
trap stop_serve EXIT
# Credits enough that the run never meets 402 (video misses cost 50 to 300).
start_serve "$MEDIACTL" "$SERVE_LOG" --dev-credits 100000000 || {
    echo "schemathesis: no server to test" >&2
    exit 1
}

# Every phase: the document's examples, boundary values, random requests, and sequences that
# follow its links (a job answer's `job_id` to GET the job, a result's `cache_key` to purge it).
# --seed: the same cases on every run, so a failure reproduces (and no example database is kept).
set +e
NO_COLOR=1 timeout "$TIME_LIMIT" "$VENV/bin/schemathesis" run "$BASE/openapi.json" \
    --url "$BASE" \
    --header "Authorization: Bearer $KEY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$MAX_EXAMPLES" \
    --seed 1 \
    --generation-database none \
    --workers 2 \
    --request-timeout 30 \
    --output-sanitize true \
    ${SCHEMATHESIS_EXTRA_ARGS:-} \
    > "$LOG" 2>&1
result=$?
set -e

if ((result == 124)); then
    echo "schemathesis: stopped after $TIME_LIMIT s (the log so far: $LOG)" >&2
    tail -n 40 "$LOG" >&2
    exit 1
fi
# Its summary: operations tested, cases generated, failures; the failures themselves if any.
if ((result != 0)) && grep -q '^=* FAILURES =*$' "$LOG"; then
    sed -n '/^=* FAILURES =*$/,$p' "$LOG"
elif ((result != 0)); then
    tail -n 30 "$LOG"
else
    sed -n '/^=* SUMMARY =*$/,$p' "$LOG"
fi
tested=$(sed -nE 's/^ *Tested: *([0-9]+).*/\1/p' "$LOG" | tail -n 1)
cases=$(awk '/^ *Test cases:/ { getline; sub(/^ +/, ""); line = $0 } END { print line }' "$LOG")
echo "schemathesis: ${tested:-?} operations tested, ${cases:-no cases}; exit $result (log: $LOG)"
exit "$result"
