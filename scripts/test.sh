#!/usr/bin/env bash
# The whole test suite: formatting, lints, the SAM template lint, and every test of the workspace,
# with the AWS adapters tested against a local AWS emulator (moto server, strict about DynamoDB
# transaction conflicts: see scripts/moto_server.py) that this script installs into .venv, starts
# on a free loopback port and stops whatever happens.
#
#     scripts/test.sh            every test
#     scripts/test.sh FILTER     only the tests whose name contains FILTER (cargo test -- FILTER),
#                                after the same formatting and lint checks
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
if ! "$VENV/bin/python" -c "import moto, cfnlint, flask, openai" 2>/dev/null; then
    echo "== installing the AWS emulator and cfn-lint into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
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

PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
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
    cargo test --workspace --all-features -- "$@" 2>&1 | tee target/test-output.log
else
    echo "== cargo test (AWS emulator on port $PORT)"
    cargo test --workspace --all-features 2>&1 | tee target/test-output.log
fi
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo ends on the last crate's doc-tests).
count() {
    sed -nE "s/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\\$1/p" target/test-output.log |
        awk '{ s += $1 } END { print s + 0 }'
}
echo "tests: $(count 1) passed, $(count 2) failed"
exit "$status"
