#!/usr/bin/env bash
# The whole test suite: formatting, lints, the SAM template lint, the OpenAPI document's validation,
# and every test of the workspace, with the AWS adapters tested against a local AWS emulator (moto
# server, strict about DynamoDB transaction conflicts: see scripts/moto_server.py) that this script
# installs into .venv, starts on a free loopback port and stops whatever happens; then schemathesis
# against `mediactl serve` (scripts/schemathesis.sh).
#
#     scripts/test.sh            every test, then schemathesis, the OpenAI SDK against `serve`
#                                (scripts/openai_sdk_check.sh), the README's "Run a function
#                                locally" with cargo-lambda (scripts/lambda_local_check.sh) and
#                                its "Run a function with `sam local invoke`" (scripts/sam-local.sh)
#     scripts/test.sh FILTER     only the tests whose name contains FILTER (cargo test -- FILTER),
#                                after the same formatting and lint checks; none of those four
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

# A full run from a clean clone writes about 7 GB (target/, the two venvs, Docker's images). A full
# disk fails pip, cargo and Docker in ways that do not say so: say it first.
NEEDED_GB=8
free_gb=$(df -B1G --output=avail . | tail -1 | tr -d ' ')
echo "== disk: $(disk_report)"
if ((free_gb < NEEDED_GB)); then
    echo "== WARNING: ${free_gb} GB free where the build goes; a full run from a clean clone needs about 7 GB (this warns under $NEEDED_GB)" >&2
fi

VENV=.venv
if ! "$VENV/bin/python" -c "import moto, cfnlint, flask, openai, openapi_spec_validator, schemathesis" 2>/dev/null ||
    [ ! -x "$VENV/bin/cargo-lambda" ]; then
    echo "== installing the test tools (AWS emulator, cfn-lint, schemathesis...) into $VENV"
    python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt ||
        { echo "== FAILED: installing the test tools into $VENV (disk: $(disk_report))" >&2; exit 1; }
fi

# The dashboard is checked in a real browser (mediactl/tests/observe.rs): Debian's Chromium.
if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium (headless, for the dashboard test)"
    apt-get install -y --no-install-recommends chromium >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cfn-lint template.yaml"
"$VENV/bin/cfn-lint" template.yaml
echo "== openapi-spec-validator openapi.yaml"
"$VENV/bin/openapi-spec-validator" openapi.yaml

PORT=$(free_port)
mkdir -p target
"$VENV/bin/python" scripts/moto_server.py "$PORT" > target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null; wait "$MOTO_PID" 2>/dev/null || true' EXIT

# Only the emulator: no real account, profile or instance metadata can be reached.
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
export MEDIA_TEST_TABLE=media-cache-test MEDIA_TEST_BUCKET=media-cache-test
export MEDIA_TEST_PYTHON="$PWD/$VENV/bin/python"

"$VENV/bin/python" scripts/aws_emulator.py wait "$AWS_ENDPOINT_URL"
"$VENV/bin/python" scripts/aws_emulator.py setup "$MEDIA_TEST_TABLE" "$MEDIA_TEST_BUCKET"
set +e
if (($#)); then
    echo "== cargo test -- $* (AWS emulator on port $PORT)"
    cargo test --workspace --all-features --no-fail-fast -- "$@" 2>&1 | tee target/test-output.log
else
    echo "== cargo test (AWS emulator on port $PORT)"
    cargo test --workspace --all-features --no-fail-fast 2>&1 | tee target/test-output.log
fi
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo ends on the last crate's doc-tests).
count() {
    sed -nE "s/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\\$1/p" target/test-output.log |
        awk '{ s += $1 } END { print s + 0 }'
}
passed=$(count 1)
failed=$(count 2)

# The AWS suites run only when built with --all-features (the DynamoDB, S3 and SQS contracts in
# media-cache's aws_contract) and against the emulator (integration-tests' aws): a run that
# built them without their tests would pass while testing nothing. In a full run each must have
# run tests; a filtered run may legitimately select none of them.
ran() { # how many tests the test binary $1 ran (passed + failed): 0 if none, or if it never started
    awk -v bin="$1" '
        /^[[:space:]]+Running / {
            path = $NF
            gsub(/[()]/, "", path)
            name = path
            sub(/.*\//, "", name)
            sub(/-[0-9a-f]+$/, "", name)
            current = (name == bin)
            next
        }
        current && /^test result: / {
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^(passed|failed);$/) total += $(i - 1)
            }
            current = 0
        }
        END { print total + 0 }' target/test-output.log
}
if ((! $#)); then
    for suite in aws_contract aws; do
        if (($(ran "$suite") == 0)); then
            echo "== FAILED: the test binary $suite ran no tests (built without --all-features," \
                "or it never started)" >&2
            failed=$((failed + 1))
            status=1
        fi
    done
fi

# The contract from outside: schemathesis drives `mediactl serve` (the binary the tests just
# built) from openapi.yaml and checks its answers against it. Full runs only; it counts as one
# test in the closing line.
if ((! $#)); then
    echo "== schemathesis: openapi.yaml against mediactl serve"
    if scripts/schemathesis.sh target/debug/mediactl; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        status=1
    fi
fi

# Checks with real clients that end with "NAME: N passed, N failed": their counts join the closing
# line (a check that stopped before its count is one failure).
run_check() {
    local name=$1 title=$2
    shift 2
    echo "== $title"
    set +e
    "$@" 2>&1 | tee "target/$name.log"
    local rc=${PIPESTATUS[0]}
    set -e
    local line
    line=$(grep -E "^$name: [0-9]+ passed, [0-9]+ failed$" "target/$name.log" | tail -1) || true
    local p=0 f=1
    if [ -n "$line" ]; then
        p=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")
        f=$(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$line")
    fi
    if ((rc != 0)); then
        status=1
        ((f > 0)) || f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}
if ((! $#)); then
    run_check openai-sdk "the official OpenAI SDK against mediactl serve's drop-ins" \
        timeout -k 30 600 scripts/openai_sdk_check.sh target/debug/mediactl
    run_check lambda-local "README: run a function locally (cargo lambda watch, invoke, mediactl worker)" \
        timeout -k 60 1800 scripts/lambda_local_check.sh
    run_check sam-local "README: run a function with sam local invoke (sam build, Docker, every event)" \
        timeout -k 90 2400 scripts/sam-local.sh
fi
echo "tests: $passed passed, $failed failed"
exit "$status"
