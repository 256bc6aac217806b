#!/usr/bin/env bash
# Cold start of the Lambda functions next to a hello-world `lambda_runtime` function, measured in
# the same run against a local runtime-API stub (tools/coldstart): process spawn to the first
# `GET /runtime/invocation/next`, binaries alternating, min/median/p90 and the ratio to hello-world.
#
#     scripts/coldstart.sh                    tts and completion, 20 runs each
#     RUNS=50 scripts/coldstart.sh tts        only tts, 50 runs
#     NO_BUILD=1 scripts/coldstart.sh         the release binaries already in target/release
#
# Extra options go to the tool through COLDSTART_ARGS, e.g. COLDSTART_ARGS="--max-ratio 2" (exit
# status 1 when a function's median init is more than twice hello-world's).
# Release builds (opt-level z, LTO) of each function take minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

FUNCTIONS=("$@")
[ ${#FUNCTIONS[@]} -gt 0 ] || FUNCTIONS=(tts completion)
RUNS=${RUNS:-20}

if [ -z "${NO_BUILD:-}" ]; then
    packages=()
    for f in "${FUNCTIONS[@]}"; do packages+=(-p "$f"); done
    echo "== cargo build --release ${packages[*]}"
    cargo build --release "${packages[@]}"
    # Each on its own: cargo unifies the features of dependencies within one build, and
    # hello-lambda built with anything else would stop being a plain hello-world.
    echo "== cargo build --release -p hello-lambda"
    cargo build --release -p hello-lambda
    echo "== cargo build --release -p coldstart"
    cargo build --release -p coldstart
fi

BIN=target/release
targets=("$BIN/hello-lambda")
for f in "${FUNCTIONS[@]}"; do
    case "$f" in
        # An SQS consumer: an empty batch, which touches no AWS service.
        completion) targets+=("$BIN/$f=tools/coldstart/events/sqs-empty.json") ;;
        # The HTTP functions: API Gateway v2 `GET /healthz` (the tool's default event).
        *) targets+=("$BIN/$f") ;;
    esac
done

# shellcheck disable=SC2086 # COLDSTART_ARGS is a list of options
"$BIN/coldstart" --runs "$RUNS" ${COLDSTART_ARGS:-} "${targets[@]}"
