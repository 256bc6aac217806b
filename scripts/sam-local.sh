#!/usr/bin/env bash
# The README's "Run a function with `sam local invoke`", offline, as a test. It installs what it
# needs (Debian's docker.io and busybox-static, the pinned SAM CLI in .venv-sam), starts a Docker
# daemon of its own when none answers (no bridge, no firewall or forwarding changes: containers
# run on the host's network, all traffic stays on loopback), `sam build`s the six functions for
# x86_64 (each bootstrap must stay under 10 MB), builds the stand-in for Lambda's provided.al2023
# image, starts the AWS emulator (moto server) and the provider simulator on loopback with a user
# holding the events' key, and runs `sam local invoke` for every file of events/ through its
# function, comparing its statusCode with what tests/aws/events.rs expects: tts twice (a MISS,
# then a HIT), and the completion function's SQS event on the job the video event started, until
# the job is completed. Everything it started is stopped by PID or process group whatever
# happens; it checks that no container, network or firewall rule is left. scripts/test.sh runs
# it; it ends with "sam-local: N passed, N failed". x86_64 Linux, as root (apt-get, dockerd).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
source scripts/sample_events.sh

VENV=${VENV:-.venv}
SAM_VENV=${SAM_VENV:-.venv-sam}
OUT=${CARGO_TARGET_DIR:-target}/sam-local
# The stand-in base image (see the README): not AWS's, hence a name of its own.
IMAGE=media-cache/provided-standin:al2023-x86_64
# The functions' budget, in the README's MB.
SIZE_LIMIT=10000000
LOGS=$OUT/logs
rm -rf "$LOGS" && mkdir -p "$LOGS"
WORK=$(mktemp -d /tmp/sam-local.XXXXXX)
export SAM_CLI_TELEMETRY=0
# cargo-lambda and its Zig, for sam build.
export PATH="$PWD/$VENV/bin:$PATH"

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL  $*"; }

GROUPS_STARTED=()
DOCKERD_PID=
POLICY_RC_CREATED=
CONTAINERS_BEFORE=
stop_groups() {
    for pgid in "${GROUPS_STARTED[@]}"; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    for pgid in "${GROUPS_STARTED[@]}"; do
        wait_for 10 bash -c "! kill -0 -- -$pgid" || kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    GROUPS_STARTED=()
}
# SAM removes its containers; whatever an interrupted run left is removed here.
remove_containers() {
    local ids
    ids=$(docker ps -aq --filter label=sam.cli.container.type 2>/dev/null) || return 0
    for id in $ids; do
        grep -qx "$id" <<<"$CONTAINERS_BEFORE" || docker rm -f "$id" >/dev/null 2>&1 || true
    done
}
stop_dockerd() {
    if [ -n "$DOCKERD_PID" ]; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        wait_for 60 bash -c "! kill -0 $DOCKERD_PID" || kill -KILL -- "-$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
        DOCKERD_PID=
    elif docker info >/dev/null 2>&1; then
        # Someone else's daemon: only the images this run made go.
        docker images -q "${IMAGE%%:*}" | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
    fi
}
# The mounts a stopped dockerd leaves in its exec root (the host's network namespace, bound for
# host-network containers).
unmount_work() {
    awk -v dir="$WORK/" 'index($2, dir) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount "$mount" 2>/dev/null || umount -l "$mount" || true; done
}
cleanup() {
    stop_groups
    remove_containers
    stop_dockerd
    unmount_work
    [ -z "$POLICY_RC_CREATED" ] || rm -f /usr/sbin/policy-rc.d
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

finish() {
    echo "sam-local: $PASSED passed, $FAILED failed"
    exit $((FAILED > 0))
}
# A step that cannot go on: its failure, the end of the logs it names, the count.
abort() {
    fail "$1"
    shift
    echo "disk: $(disk_report)"
    for log in "$@"; do
        [ -f "$log" ] && { echo "--- $log (last lines)"; tail -n 30 "$log"; }
    done
    finish
}
# Runs a command line in the background in a process group of its own (stopped by cleanup).
start_group() {
    setsid bash -c "exec $1" >"$2" 2>&1 </dev/null &
    GROUPS_STARTED+=("$!")
}
# The host's firewall, forwarding and links: compared before and after the run.
network_state() {
    { iptables -S; iptables -t nat -S; ip6tables -S; } 2>&1 || true
    sysctl -n net.ipv4.ip_forward 2>&1 || true
    ip -o link show | awk -F': ' '{ print $2 }'
}

# A command that fails where the script does not expect it ends the run with its line, not silently.
trap 'abort "line $LINENO: \"$BASH_COMMAND\" failed"' ERR

[ "$(uname -m)" = x86_64 ] || abort "the stand-in image is made from this machine's x86_64 glibc"

# --- What it needs, installed once.
if ! command -v dockerd >/dev/null || ! command -v busybox >/dev/null; then
    echo "== installing docker.io and busybox-static"
    # docker.io's postinst would start the system's Docker service (a default bridge, iptables
    # rules): a policy-rc.d denying it for the install, unless the system has one.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    packages=(docker.io busybox-static)
    apt-get install -y --no-install-recommends "${packages[@]}" >"$LOGS/apt.log" 2>&1 ||
        { apt-get update >>"$LOGS/apt.log" 2>&1 &&
            apt-get install -y --no-install-recommends "${packages[@]}" >>"$LOGS/apt.log" 2>&1; } ||
        abort "apt-get install ${packages[*]}" "$LOGS/apt.log"
    [ -z "$POLICY_RC_CREATED" ] || { rm -f /usr/sbin/policy-rc.d && POLICY_RC_CREATED=; }
fi
if ! "$VENV/bin/python" -c "import moto, boto3" 2>/dev/null || [ ! -x "$VENV/bin/cargo-lambda" ]; then
    echo "== installing the test tools (AWS emulator, cargo-lambda) into $VENV"
    { python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt; } \
        >"$LOGS/venv.log" 2>&1 || abort "installing the test tools into $VENV" "$LOGS/venv.log"
fi
SAM_VERSION=$(sed -n 's/^aws-sam-cli==//p' scripts/requirements-sam.txt)
if [ "$("$SAM_VENV/bin/python" -c 'import samcli; print(samcli.__version__)' 2>/dev/null)" != "$SAM_VERSION" ]; then
    echo "== installing SAM CLI $SAM_VERSION into $SAM_VENV"
    { python3 -m venv "$SAM_VENV" &&
        "$SAM_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-sam.txt; } \
        >"$LOGS/venv-sam.log" 2>&1 || abort "installing SAM CLI $SAM_VERSION into $SAM_VENV" "$LOGS/venv-sam.log"
fi
SAM=("$SAM_VENV/bin/python" scripts/sam_host_network.py)

# --- Docker: the one that answers, or a daemon of this run's own.
NETWORK_BEFORE=$(network_state)
if docker info >/dev/null 2>&1; then
    echo "== using the running Docker daemon ($(docker info --format '{{.Name}} {{.ServerVersion}}'))"
else
    # Its own everything (configuration, state, socket) in $WORK: nothing of it outlives the run.
    # No bridge, no iptables rules, no forwarding or masquerading, no proxy processes: the
    # containers use the host's network (scripts/sam_host_network.py).
    echo '{}' >"$WORK/daemon.json"
    setsid dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/docker" \
        --exec-root "$WORK/run" --pidfile "$WORK/dockerd.pid" --host "unix://$WORK/docker.sock" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --userland-proxy=false >"$LOGS/dockerd.log" 2>&1 </dev/null &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$WORK/docker.sock"
    wait_for 60 docker info || abort "dockerd did not answer within 60 s" "$LOGS/dockerd.log"
    echo "== started dockerd (PID $DOCKERD_PID, $(docker info --format '{{.ServerVersion}}, {{.Driver}}'))"
fi
CONTAINERS_BEFORE=$(docker ps -aq --filter label=sam.cli.container.type)

# --- sam build: cargo lambda build --release of each function, for x86_64.
started=$SECONDS
if "$SAM_VENV/bin/sam" build --beta-features --parameter-overrides Architecture=x86_64 \
    --build-dir "$OUT/build" >"$LOGS/sam-build.log" 2>&1; then
    pass "sam build: the six functions for x86_64 ($((SECONDS - started)) s)"
else
    abort "sam build" "$LOGS/sam-build.log"
fi
# Each bootstrap: under the size budget, and no glibc symbol newer than provided.al2023's 2.34
# (the stand-in below has this machine's glibc, which would not notice).
FUNCTIONS=(Tts Image Music Video Jobs Completion)
for f in "${FUNCTIONS[@]}"; do
    bootstrap=$OUT/build/${f}Function/bootstrap
    size=$(stat -c %s "$bootstrap" 2>/dev/null) || size=0
    glibc=$(python3 -c 'import re, sys
found = re.findall(rb"GLIBC_2\.([0-9]+)", open(sys.argv[1], "rb").read())
print(max(map(int, found), default=0))' "$bootstrap" 2>/dev/null) || glibc=?
    if ((size > 0 && size < SIZE_LIMIT)) && [ "$glibc" != "?" ] && ((glibc <= 34)); then
        pass "${f,,}: bootstrap $size bytes, glibc 2.$glibc symbols at most"
    else
        fail "${f,,}: bootstrap $size bytes (budget $SIZE_LIMIT), glibc 2.$glibc symbols (at most 2.34)"
    fi
done

# --- The stand-in for public.ecr.aws/lambda/provided:al2023-x86_64, which cannot be pulled
# here: a static busybox (SAM's image step runs sh, mv and chmod), this machine's glibc
# libraries the bootstraps link and its loader, CA certificates, Lambda's directories. SAM adds
# its runtime interface emulator on top; the emulator and the bootstrap are the real ones.
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{usr/bin,usr/lib64,etc/ssl/certs,etc/pki/tls/certs,var/task,var/runtime,opt,tmp,proc,sys,dev}
ln -s usr/bin "$ROOT/bin"
ln -s usr/lib64 "$ROOT/lib64"
ln -s usr/lib "$ROOT/lib"
# The libraries go to Amazon Linux's /usr/lib64, which is also where this machine's (Debian's)
# loader looks for them.
mkdir -p "$ROOT/usr/lib"
ln -s ../lib64 "$ROOT/usr/lib/x86_64-linux-gnu"
cp "$(command -v busybox)" "$ROOT/usr/bin/busybox"
for applet in sh mv chmod cp rm ls cat mkdir env; do
    ln -s busybox "$ROOT/usr/bin/$applet"
done
for f in "${FUNCTIONS[@]}"; do
    ldd "$OUT/build/${f}Function/bootstrap"
done | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    cp -L "$lib" "$ROOT/usr/lib64/"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/pki/tls/certs/ca-bundle.crt"
chmod 1777 "$ROOT/tmp"
# SAM builds its image on this one only when it has none: no older one may be left.
docker images -q "${IMAGE%%:*}" | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
if tar -C "$ROOT" -c . | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'WORKDIR /var/task' - "$IMAGE" >"$LOGS/image.log" 2>&1; then
    pass "the stand-in image $IMAGE ($(du -sh "$ROOT" | cut -f1): $(ls "$ROOT/usr/lib64" | tr '\n' ' '))"
else
    abort "docker import of the stand-in image" "$LOGS/image.log"
fi

# --- The AWS emulator and the provider simulator on loopback, a user with the events' key.
MOTO_PORT=$(free_port)
SIM_PORT=$(free_port)
ENV_FILE=$WORK/env.json
# The env file's addresses, this run's ports.
for address in 127.0.0.1:5000 127.0.0.1:9100; do
    grep -q "$address" events/sam-local-env.json ||
        abort "events/sam-local-env.json no longer contains $address: update this script"
done
sed -e "s/127\.0\.0\.1:5000/127.0.0.1:$MOTO_PORT/g" -e "s/127\.0\.0\.1:9100/127.0.0.1:$SIM_PORT/g" \
    events/sam-local-env.json >"$ENV_FILE"
setting() {
    "$VENV/bin/python" -c 'import json, sys
print(json.load(open(sys.argv[1]))["Parameters"][sys.argv[2]])' "$ENV_FILE" "$1"
}
TABLE=$(setting TABLE_NAME)
BUCKET=$(setting BUCKET_NAME)
QUEUE_URL=$(setting JOBS_QUEUE_URL)

# Only the emulator: no real account, profile or instance metadata can be reached. SAM hands
# the keys and the region to the functions.
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
start_group "$VENV/bin/python scripts/moto_server.py $MOTO_PORT" "$LOGS/moto.log"
"$VENV/bin/python" scripts/aws_emulator.py wait "$AWS_ENDPOINT_URL" &&
    "$VENV/bin/python" scripts/aws_emulator.py setup "$TABLE" "$BUCKET" >/dev/null &&
    [ "$("$VENV/bin/python" scripts/aws_emulator.py queue "${QUEUE_URL##*/}")" = "$QUEUE_URL" ] ||
    abort "the AWS emulator: table $TABLE, bucket $BUCKET, queue $QUEUE_URL" "$LOGS/moto.log"

started=$SECONDS
start_group "cargo run -p provider-sim -- --addr 127.0.0.1:$SIM_PORT" "$LOGS/simulator.log"
wait_for 900 curl -s -o /dev/null "http://127.0.0.1:$SIM_PORT/_sim/calls" ||
    abort "the simulator did not start within 900 s" "$LOGS/simulator.log"
cargo run -p mediactl -- --table "$TABLE" users create --credits 1000 --api-key mc_sample_events_key \
    >"$LOGS/user.log" 2>&1 || abort "mediactl users create" "$LOGS/user.log"
pass "moto, the simulator and a user with the events' key ($((SECONDS - started)) s)"

# --- sam local invoke.
# The number of invocations so far (each has its log).
invocations() { find "$LOGS" -name 'invoke-*.log' | wc -l; }
# FUNCTION EVENT_FILE: the function's answer (on stdout, and with SAM's and the function's logs
# in $LOGS).
invoke() {
    local log
    log="$LOGS/invoke-$(($(invocations) + 1))-${1,,}-$(basename "$2" .json).log"
    : >"$log"
    timeout 300 "${SAM[@]}" local invoke "${1}Function" --template "$OUT/build/template.yaml" \
        --parameter-overrides Architecture=x86_64 --event "$2" --env-vars "$ENV_FILE" \
        --invoke-image "$IMAGE" --skip-pull-image 2>>"$log" | tee -a "$log"
}
# EXPRESSION: evaluated over an answer read from stdin, as `a`, its headers `h` and its body `b`.
answer() {
    "$VENV/bin/python" -c '
import json, sys
lines = sys.stdin.read().strip().splitlines()
a = json.loads(lines[-1]) if lines else {}
h = {k.lower(): v for k, v in (a.get("headers") or {}).items()}
try:
    b = json.loads(a.get("body") or "null")
except ValueError:
    b = None
print(eval(sys.argv[1]))' "$1" 2>/dev/null || echo "?"
}

started=$SECONDS
out=$(invoke Tts tools/coldstart/events/healthz.json) || true
if [ "$(answer 'a.get("statusCode")' <<<"$out")" = 200 ]; then
    pass "tts GET /healthz: statusCode 200 ($((SECONDS - started)) s)"
else
    abort "tts GET /healthz: ${out:0:400}" "$LOGS/invoke-1-tts-healthz.log"
fi

load_expected || abort "tests/aws/events.rs: expected statuses not found"
VIDEO_JOB=
for path in events/*.json; do
    file=$(basename "$path")
    is_http_event "$file" || continue # the SQS event is invoked below
    if [ -z "${EXPECTED[$file]:-}" ]; then
        fail "events/$file has no expected status in tests/aws/events.rs"
        continue
    fi
    read -r function status <<<"${EXPECTED[$file]}"
    started=$SECONDS
    out=$(invoke "$function" "$path") || true
    got=$(answer 'a.get("statusCode")' <<<"$out")
    what="${function,,} $file: statusCode $got"
    if [ "$file" = tts-valid.json ]; then
        what+=", $(answer 'h.get("x-cache")' <<<"$out"), $(answer 'h.get("x-credits-charged")' <<<"$out") credits"
        status+=", MISS, 2 credits"
    fi
    if [ "$what" = "${function,,} $file: statusCode $status" ]; then
        pass "$what ($((SECONDS - started)) s)"
    else
        fail "$what, expected $status: ${out:0:400}"
    fi
    [ "$file" = video-valid.json ] && VIDEO_JOB=$(answer 'b["job_id"]' <<<"$out")
done

# The same speech again: a hit, for the hit price.
started=$SECONDS
out=$(invoke Tts events/tts-valid.json) || true
got=$(answer '"%s, %s, %s credits" % (a.get("statusCode"), h.get("x-cache"), h.get("x-credits-charged"))' <<<"$out")
if [ "$got" = "200, HIT, 1 credits" ]; then
    pass "tts tts-valid.json again: statusCode $got ($((SECONDS - started)) s)"
else
    fail "tts tts-valid.json again: $got, expected 200, HIT, 1 credits: ${out:0:400}"
fi

# The completion function's SQS event, its first message on the video job (the second is not
# JSON: dropped, never a batch item failure), until the job is completed; the job through the
# jobs function's event with that id. The simulator's tasks take 3 s.
if [[ "$VIDEO_JOB" =~ ^job_[0-9a-f]{32}$ ]]; then
    sed "s/job_0\{32\}/$VIDEO_JOB/g" events/completion-sqs.json >"$WORK/completion-sqs.json"
    sed "s/job_0\{32\}/$VIDEO_JOB/g" events/jobs-status-unknown.json >"$WORK/jobs-status.json"
    started=$SECONDS
    rounds=0
    job=
    while ((SECONDS - started < 120)); do
        rounds=$((rounds + 1))
        out=$(invoke Completion "$WORK/completion-sqs.json") || true
        failures=$(answer 'a.get("batchItemFailures")' <<<"$out")
        [ "$failures" = "[]" ] || break
        job=$(invoke Jobs "$WORK/jobs-status.json") || true
        [ "$(answer 'b.get("status")' <<<"$job")" = completed ] && break
        sleep 2
    done
    got=$(answer '"%s %s" % (a.get("statusCode"), b.get("status"))' <<<"$job")
    if [ "$failures" = "[]" ] && [ "$got" = "200 completed" ] &&
        [ "$(answer '"X-Amz-Signature" in b.get("url", "")' <<<"$job")" = True ]; then
        pass "completion completion-sqs.json: the video job $VIDEO_JOB completed, its video in the bucket ($rounds invocations, $((SECONDS - started)) s)"
    else
        fail "completion completion-sqs.json on $VIDEO_JOB: batch item failures $failures, job: ${job:0:400}"
    fi
else
    fail "video video-valid.json gave no job id ($VIDEO_JOB): the completion event was not run"
fi

# --- Nothing left behind: containers, networks; then the daemon and the host's network.
left=$(docker ps -aq --filter label=sam.cli.container.type | grep -vxF "$CONTAINERS_BEFORE" || true)
if [ -z "$left" ]; then
    pass "no container left ($(invocations) invocations)"
else
    fail "containers left: $(echo $left)"
fi
networks=$(docker network ls --filter type=custom -q)
if [ -z "$networks" ]; then
    pass "no Docker network created"
else
    fail "Docker networks: $(echo $networks)"
fi
stop_groups
dockerd_was=$DOCKERD_PID
stop_dockerd
if [ -n "$dockerd_was" ]; then
    unmount_work
    if kill -0 "$dockerd_was" 2>/dev/null; then
        fail "dockerd (PID $dockerd_was) still runs"
    elif pgrep -f "$WORK/" >/dev/null || grep -q " $WORK/" /proc/mounts; then
        fail "dockerd's processes or mounts are left: $(pgrep -af "$WORK/" | head -3) $(grep " $WORK/" /proc/mounts)"
    else
        pass "dockerd (PID $dockerd_was) stopped, with its containerd, state and mounts"
    fi
fi
if diff <(echo "$NETWORK_BEFORE") <(network_state) >"$LOGS/network.diff"; then
    pass "the host's firewall rules, forwarding and links are as before"
else
    fail "the host's network changed: $(cat "$LOGS/network.diff")"
fi
finish
