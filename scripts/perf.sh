#!/usr/bin/env bash
# The hit path's speed beside the machine's ceiling, measured in one sitting (README,
# "Performance"):
#   1. wrk, one thread, the same tts request every time (all hits), at 1 and 32 connections,
#      against `mediactl serve` and against a trivial axum handler on two workers (the ceiling:
#      mediactl/examples/ceiling.rs), alternated, ROUNDS times;
#   2. `mediactl bench --hits-only` against serve and the ceiling (the bench tool's figures);
#   3. serve's RSS after HITS hits, and the CPU each request costs serve and the ceiling;
#   4. `mediactl bench` on a Zipf(1.1) workload of 10,000 requests over 1,000 distinct at c=32,
#      with provider calls read from the simulator and the credits checked against the balance.
# Builds with the `bench` profile (opt-level 3): the release profile is sized for Lambda.
#
#     scripts/perf.sh              # everything, figures in target/perf/
#     DURATION=5s ROUNDS=1 scripts/perf.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-2}
HITS=${HITS:-100000}
OUT=target/perf
mkdir -p "$OUT"

command -v wrk >/dev/null || { echo "== installing wrk"; apt-get install -y wrk >/dev/null; }

echo "== building mediactl and the ceiling (profile bench)"
cargo build --profile bench -p mediactl --bin mediactl --example ceiling 2>&1 | tail -1
BIN=target/release/mediactl
CEILING_BIN=target/release/examples/ceiling


DATA=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

CEILING_PORT=$(free_port)
"$CEILING_BIN" "127.0.0.1:$CEILING_PORT" 2>/dev/null &
PIDS+=($!)

SERVE_PORT=$(free_port)
"$BIN" --data-dir "$DATA" serve --addr "127.0.0.1:$SERVE_PORT" --dev-credits 1000000000 \
    > "$OUT/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=($SERVE_PID)
for _ in $(seq 100); do grep -q "API key" "$OUT/serve.log" 2>/dev/null && break; sleep 0.1; done
API_KEY=$(grep "API key" "$OUT/serve.log" | awk '{print $NF}')
SIM_URL=$(grep "built-in simulator at" "$OUT/serve.log" | sed -E 's/.*simulator at ([^ ]+).*/\1/')
URL="http://127.0.0.1:$SERVE_PORT"

BODY='{"text":"The quick brown fox jumps over the lazy dog."}'
cat > "$OUT/post.lua" <<EOF
wrk.method = "POST"
wrk.body   = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $API_KEY"
EOF
status=$(curl -s -o /dev/null -w '%{http_code}' "$URL/api/v1/media/tts" \
    -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -d "$BODY")
[ "$status" = 200 ] || { echo "the first request answered $status"; exit 1; }

wrk_line() { # name port connections
    wrk -t1 -c"$3" -d"$DURATION" --latency -s "$OUT/post.lua" "http://127.0.0.1:$2/api/v1/media/tts" \
        > "$OUT/wrk-$1-c$3.txt"
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$OUT/wrk-$1-c$3.txt")
    p50=$(awk '$1 == "50%" {print $2}' "$OUT/wrk-$1-c$3.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$OUT/wrk-$1-c$3.txt")
    errors=$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk-$1-c$3.txt")
    printf '| %-8s | %3s | %8s | %9s | %9s | %s |\n' "$1" "$3" "$rps" "$p50" "$p99" "${errors:-0}"
}

bench_summary() { # report.json
    python3 - "$1" <<'EOF2'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]["overall"]
print(f"c={r['concurrency']}: {r['requests']} requests, {r['rps']:.0f} req/s, p50 {l['p50']} ms, "
      f"p90 {l['p90']} ms, p99 {l['p99']} ms, max {l['max']} ms, errors {r['errors']}")
EOF2
}

bench_hits() { # name url requests concurrency threads
    "$BIN" bench --url "$2" --api-key "$API_KEY" --hits-only --requests "$3" --concurrency "$4" \
        --threads "$5" --json > "$OUT/bench-$1-c$4.json"
    printf '%-8s ' "$1"
    bench_summary "$OUT/bench-$1-c$4.json"
}

echo
echo "== mediactl bench --hits-only, serve and the ceiling, alternated"
bench_hits serve "$URL" "$HITS" 32 2
echo "serve RSS after $HITS hits: $(awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' /proc/$SERVE_PID/status)"
# The first run above grows a new data file from nothing; the rounds compare warm servers, each
# beside the ceiling measured just before it.
for round in $(seq "$ROUNDS"); do
    bench_hits ceiling "http://127.0.0.1:$CEILING_PORT" "$HITS" 32 2
    bench_hits serve "$URL" "$HITS" 32 2
    python3 -c 'import json, sys; s, c = (json.load(open(f))["rps"] for f in sys.argv[1:]); print(f"round: serve at {100 * s / c:.0f} % of the ceiling")' \
        "$OUT/bench-serve-c32.json" "$OUT/bench-ceiling-c32.json"
done
bench_hits ceiling "http://127.0.0.1:$CEILING_PORT" 20000 1 1
bench_hits serve "$URL" 20000 1 1

echo
echo "== wrk -t1 -d$DURATION, the same tts request (all hits), alternated with the ceiling"
echo "| server   |   c |    req/s |       p50 |       p99 | non-2xx |"
echo "| --- | --- | --- | --- | --- | --- |"
for round in $(seq "$ROUNDS"); do
    for c in 1 32; do
        wrk_line ceiling "$CEILING_PORT" "$c"
        wrk_line serve "$SERVE_PORT" "$c"
    done
done

echo

echo "serve RSS after the wrk runs too: $(awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' /proc/$SERVE_PID/status)"

# CPU per hit: the CPU time of each of a server's threads (utime + stime in /proc) over the
# requests wrk made at c=32. Steadier than req/s on a machine shared with the load generator.
cpu_ticks() { # pid -> "thread-name ticks" lines, summed by name
    for t in /proc/"$1"/task/*; do
        echo "$(tr ' ' '_' < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
cpu_per_request() { # name pid port
    local before after requests
    before=$(cpu_ticks "$2")
    wrk -t1 -c32 -d"$DURATION" -s "$OUT/post.lua" "http://127.0.0.1:$3/api/v1/media/tts" > "$OUT/wrk-cpu-$1.txt"
    after=$(cpu_ticks "$2")
    requests=$(awk '/requests in/ {print $1}' "$OUT/wrk-cpu-$1.txt")
    join <(echo "$before") <(echo "$after") | awk -v n="$requests" -v hz="$(getconf CLK_TCK)" -v name="$1" '
        { d = ($3 - $2) * 1e6 / hz / n; total += d; line = line sprintf(", %s %.1f", $1, d) }
        END { printf "%-8s %.1f us of CPU a request (%d requests%s)\n", name, total, n, line }'
}
echo
echo "== CPU per request at c=32 (wrk -t1 -d$DURATION)"
cpu_per_request ceiling "${PIDS[0]}" "$CEILING_PORT"
cpu_per_request serve "$SERVE_PID" "$SERVE_PORT"

echo
echo "== mediactl bench: Zipf(1.1), 10,000 requests over 1,000 distinct, c=32"
CREDITS=1000000
USER_OUT=$("$BIN" --data-dir "$DATA" users create --credits "$CREDITS")
ZIPF_USER=$(echo "$USER_OUT" | awk '/user_id/ {print $2}')
ZIPF_KEY=$(echo "$USER_OUT" | awk '/api_key/ {print $2}')
"$BIN" bench --url "$URL" --api-key "$ZIPF_KEY" --requests 10000 --distinct 1000 --zipf 1.1 \
    --concurrency 32 --seed 7 --sim-url "$SIM_URL" > "$OUT/bench-zipf.txt"
"$BIN" bench --url "$URL" --api-key "$ZIPF_KEY" --requests 10000 --distinct 1000 --zipf 1.1 \
    --concurrency 32 --seed 8 --sim-url "$SIM_URL" --json > "$OUT/bench-zipf.json"
cat "$OUT/bench-zipf.txt"
REMAINING=$("$BIN" --data-dir "$DATA" credits show "$ZIPF_USER" | awk 'NR == 1 {print $2}')
python3 - "$OUT/bench-zipf.json" "$OUT/bench-zipf.txt" "$CREDITS" "$REMAINING" <<'EOF'
import json, re, sys
second = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
first_charged = int(re.search(r"credits\s+(\d+) charged", text).group(1))
spent = int(sys.argv[3]) - int(sys.argv[4])
charged = first_charged + second["credits_charged"]
print(f"second run (seed 8, JSON): provider calls {second['provider_calls']} for "
      f"{second['distinct']} distinct, hit rate {second['hit_rate']:.3f}, errors {second['errors']}")
print(f"credits charged by both runs {charged}, spent from the balance {spent}: "
      + ("equal" if charged == spent else "DIFFERENT"))
sys.exit(0 if charged == spent and second["provider_calls"] == second["distinct"] else 1)
EOF
