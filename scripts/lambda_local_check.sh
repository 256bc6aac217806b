#!/usr/bin/env bash
# The README's "Run a function locally", run as written: its shell blocks (between the
# local-function markers) are taken from README.md and run in order, terminal 1 (the simulator and
# `cargo lambda watch`) and terminal 3 (`mediactl worker`) in the background. Only the addresses
# change: free loopback ports instead of 9000 and 9100, a fresh data directory instead of
# mediactl-data, `cargo lambda` bound to 127.0.0.1 and not reloading on edits. Between the blocks,
# every file of events/ is invoked through its function and its statusCode compared with what
# tests/aws/events.rs expects; the jobs they queue must be completed by the worker. Everything it
# started is stopped by process group, whatever happens. scripts/test.sh runs it; it needs
# cargo-lambda (in .venv from scripts/requirements-test.txt) and ends with "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
source scripts/sample_events.sh

VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
WORK=$(mktemp -d)
# What the background terminals print, kept for a look after the run.
LOGS=${CARGO_TARGET_DIR:-target}/lambda-local-check
rm -rf "$LOGS" && mkdir -p "$LOGS"
GROUPS_STARTED=()
cleanup() {
    for pgid in "${GROUPS_STARTED[@]}"; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    sleep 1
    for pgid in "${GROUPS_STARTED[@]}"; do
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL  $*"; }
finish() {
    echo "lambda-local: $PASSED passed, $FAILED failed"
    exit $((FAILED > 0))
}
# A step that cannot go on: its failure, what the background processes said, the count.
abort() {
    fail "$*"
    echo "disk: $(disk_report)"
    for log in "$LOGS"/*.log; do
        [ -f "$log" ] && { echo "--- $(basename "$log") (last lines)"; tail -n 25 "$log"; }
    done
    finish
}
# Runs a block in the background in a process group of its own (stopped by cleanup).
start_block() {
    setsid bash -c "$1" >"$2" 2>&1 </dev/null &
    GROUPS_STARTED+=("$!")
}

# A command that fails where the script does not expect it ends the run with its line, not silently.
trap 'abort "line $LINENO: \"$BASH_COMMAND\" failed"' ERR

command -v cargo-lambda >/dev/null || abort "cargo-lambda is not installed (pip install -r scripts/requirements-test.txt)"

PORT=$(free_port)
SIM_PORT=$(free_port)
DATA="$WORK/data"
# The README's blocks with this run's addresses.
python3 - "$PORT" "$SIM_PORT" "$DATA" >"$WORK/blocks" <<'EOF' ||
import re, sys
port, sim_port, data = sys.argv[1:]
readme = open("README.md").read()
section = re.search(r"<!-- local-function:begin.*?-->(.*?)<!-- local-function:end -->", readme, re.S)
blocks = re.findall(r"```sh\n(.*?)```", section.group(1), re.S) if section else []
changes = [
    ("127.0.0.1:9100", f"127.0.0.1:{sim_port}"),
    ("127.0.0.1:9000", f"127.0.0.1:{port}"),
    ("cargo lambda watch", f"cargo lambda watch --ignore-changes --invoke-address 127.0.0.1 --invoke-port {port}"),
    ("cargo lambda invoke", f"cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port {port}"),
    ("mediactl-data", data),
]
for old, new in changes:
    if not any(old in b for b in blocks):
        sys.exit(f"README's local-function blocks no longer contain {old!r}: update this script")
    blocks = [b.replace(old, new) for b in blocks]
sys.stdout.write("\0".join(blocks) + "\0")
EOF
    abort "README.md: the local-function blocks could not be read"
mapfile -d '' BLOCKS <"$WORK/blocks"
[ "${#BLOCKS[@]}" -eq 4 ] ||
    abort "README.md: expected 4 blocks (terminals 1, 2, 3, then 2 again), found ${#BLOCKS[@]}"

# Terminal 1: the simulator, the user, `cargo lambda watch` (the first `cargo run`s may build).
started=$SECONDS
start_block "${BLOCKS[0]}" "$LOGS/terminal-1.log"
if wait_for 900 curl -s -o /dev/null "http://127.0.0.1:$SIM_PORT/_sim/calls" &&
    wait_for 900 curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
    pass "terminal 1: the simulator and cargo lambda watch are up ($((SECONDS - started)) s)"
else
    abort "terminal 1: the simulator or cargo lambda watch did not start within 900 s"
fi

# Every sample event through its function, as tests/aws/events.rs expects it answered.
invoke() {
    timeout 600 cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port "$PORT" "$1" \
        --data-file "events/$2" 2>&1
}
load_expected || abort "tests/aws/events.rs: expected statuses not found"
QUEUED_JOBS=()
for path in events/*.json; do
    file=$(basename "$path")
    is_http_event "$file" || continue # the SQS event is invoked below
    if [ -z "${EXPECTED[$file]:-}" ]; then
        fail "events/$file has no expected status in tests/aws/events.rs"
        continue
    fi
    read -r function status <<<"${EXPECTED[$file]}"
    function=${function,,}
    started=$SECONDS
    answer=$(invoke "$function" "$file") || true
    got=$(grep -o '"statusCode":[0-9]*' <<<"$answer" | head -1 | cut -d: -f2) || true
    if [ "$got" = "$status" ]; then
        pass "$function $file: statusCode $got ($((SECONDS - started)) s)"
        [ "$status" = 202 ] && QUEUED_JOBS+=("$(grep -o 'job_[0-9a-f]*' <<<"$answer" | head -1)")
    else
        fail "$function $file: statusCode ${got:-none}, expected $status: ${answer:0:400}"
    fi
done
started=$SECONDS
answer=$(invoke completion completion-sqs.json) || true
if grep -q '"batchItemFailures":\[\]' <<<"$answer"; then
    pass "completion completion-sqs.json: no batch item failures ($((SECONDS - started)) s)"
else
    fail "completion completion-sqs.json: ${answer:0:400}"
fi

# Terminal 2: speech, then music's job, queued.
started=$SECONDS
if out=$(timeout 600 bash -euo pipefail -c "${BLOCKS[1]}" 2>&1) &&
    grep -q '"statusCode":200' <<<"$out" && grep -q '"status":"queued"' <<<"$out"; then
    pass "terminal 2: speech 200, the music job queued ($((SECONDS - started)) s)"
else
    fail "terminal 2: ${out:0:600}"
fi
JOB=$(grep -o '"job_id":"job_[0-9a-f]*"' <<<"$out" | head -1 | cut -d'"' -f4) || true
[ -n "$JOB" ] || abort "terminal 2: no job id in its output"

# Terminal 3: the worker.
started=$SECONDS
start_block "${BLOCKS[2]}" "$LOGS/terminal-3.log"
if wait_for 600 grep -q '^providers: ' "$LOGS/terminal-3.log"; then
    pass "terminal 3: mediactl worker is up ($((SECONDS - started)) s): $(grep '^providers: ' "$LOGS/terminal-3.log")"
else
    abort "terminal 3: mediactl worker did not start within 600 s"
fi

# Terminal 2 again, until the job is done (the README says about ten seconds).
started=$SECONDS
out=
while ((SECONDS - started < 90)); do
    out=$(JOB=$JOB timeout 30 bash -euo pipefail -c "${BLOCKS[3]}" 2>&1) || true
    grep -q '"status":"\(completed\|failed\)"' <<<"$out" && break
    sleep 1
done
if grep -q '"status":"completed"' <<<"$out" && grep -q '"urls":\["http' <<<"$out"; then
    pass "terminal 2 again: the README's music job completed ($((SECONDS - started)) s)"
else
    fail "terminal 2 again: ${out:0:600}"
fi
# The jobs the sample events queued (music and video), through the same jobs function.
for job in "${QUEUED_JOBS[@]}"; do
    started=$SECONDS
    out=
    while ((SECONDS - started < 90)); do
        out=$(curl -s -m 30 "http://127.0.0.1:$PORT/lambda-url/jobs/api/v1/media/jobs/$job" \
            -H 'Authorization: Bearer mc_sample_events_key') || true
        grep -q '"status":"\(completed\|failed\)"' <<<"$out" && break
        sleep 1
    done
    media=$(grep -o '"media_type":"[a-z]*"' <<<"$out" | cut -d'"' -f4) || true
    if grep -q '"status":"completed"' <<<"$out"; then
        pass "the worker completed the ${media:-?} job $job ($((SECONDS - started)) s)"
    else
        fail "job $job: ${out:0:400}"
    fi
done
# The simulator called each task's callback URL: the jobs function at PUBLIC_API_URL.
if grep -q 'callback failed' "$LOGS/terminal-1.log"; then
    fail "the simulator's callbacks: $(grep -m1 'callback failed' "$LOGS/terminal-1.log")"
else
    pass "the simulator's callbacks reached the jobs function"
fi
finish
