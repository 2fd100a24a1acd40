#!/usr/bin/env bash
# CPU a request of two gateway builds, side by side: whether a change that cut instructions
# (benches/callgrind.sh) also cut CPU time. Both builds run at once with the same
# configuration (`all`: globus_auth with a cached token, rate_limits in memory with five
# admitting checks, access_log, metrics; or `bare`), behind one mock-fast and one
# mock-globus. wrk sends non-streaming chat requests to one build for a round, then to the
# other, in ABBA order (A B, B A, A B, ...), so a drift of the shared host's speed within
# the run weighs on both alike. Each round's CPU is the process's own: every thread's
# on-CPU time from /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms
# ticks, coarse for a 2 s round) over the requests wrk completed; user time from the
# threads' tick counts, for the split. Prints each pair's B/A ratio, and the median pair.
#
#   benches/abba.sh OLD_BINARY NEW_BINARY [pairs=16] [round_seconds=2]
#
# SHAPE=bare compares the gateways without plugins. Give the same binary twice (an A/A run)
# to see the host's own spread of the ratio. Needs a release build of the workspace (for
# mock-fast, mock-globus) and wrk. Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib/plugins.sh
. benches/lib/plugins.sh

old=${1:?usage: benches/abba.sh OLD_BINARY NEW_BINARY [pairs] [round_seconds]}
new=${2:?usage: benches/abba.sh OLD_BINARY NEW_BINARY [pairs] [round_seconds]}
pairs=${3:-16}
round_secs=${4:-2}
shape=${SHAPE:-all}
case "$pairs$round_secs" in *[!0-9]*) echo "pairs and round_seconds are whole numbers" >&2; exit 2 ;; esac
[ "$pairs" -ge 1 ] && [ "$pairs" -le 200 ] || { echo "pairs: 1 to 200" >&2; exit 2; }
[ "$round_secs" -ge 1 ] && [ "$round_secs" -le 30 ] || { echo "round_seconds: 1 to 30" >&2; exit 2; }
case "$shape" in all | bare) ;; *) echo "SHAPE is all or bare" >&2; exit 2 ;; esac
command -v wrk >/dev/null || { echo "missing wrk: apt-get install wrk" >&2; exit 1; }
for bin in "$old" "$new" target/release/mock-fast target/release/mock-globus; do
    [ -x "$bin" ] || { echo "not an executable: $bin (cargo build --release --workspace --bins)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mock_port=18701 globus_port=18702 a_port=18703 b_port=18704 a_metrics=18705 b_metrics=18706
target/release/mock-fast --listen 127.0.0.1:$mock_port --threads 2 --chunks 16 >"$work/mock.log" 2>&1 &
pids+=($!)
target/release/mock-globus --listen 127.0.0.1:$globus_port --client-id bench-client \
    --client-secret bench-secret --token AgBenchToken=ada@anl.gov >"$work/globus.log" 2>&1 &
pids+=($!)

config() { # listen_port metrics_port access_log_path
    local plugins="" metrics='""'
    if [ "$shape" = all ]; then
        metrics="\"127.0.0.1:$2\""
        plugins=$(all_plugins "$3" "$globus_port")
    fi
    cat <<TOML
[server]
listen = ["127.0.0.1:$1"]
threads = 1
log_level = "warn"
metrics_listen = $metrics
$plugins
[[pools]]
name = "bench"
cluster = "local"
framework = "vllm"
models = ["facebook/opt-125m"]
backends = ["127.0.0.1:$mock_port"]
TOML
}
config $a_port $a_metrics "$work/a-access.log" >"$work/a.toml"
config $b_port $b_metrics "$work/b-access.log" >"$work/b.toml"

wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
wait_port $mock_port
wait_port $globus_port
BENCH_GLOBUS_SECRET=bench-secret "$old" run --config "$work/a.toml" >"$work/a.out" 2>&1 &
a_pid=$!
pids+=($a_pid)
BENCH_GLOBUS_SECRET=bench-secret "$new" run --config "$work/b.toml" >"$work/b.out" 2>&1 &
b_pid=$!
pids+=($b_pid)
wait_port $a_port
wait_port $b_port

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer AgBenchToken"
wrk.body = '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"Explain the concept of Globus Compute in simple terms."}],"max_tokens":16}'
LUA

# "on-CPU ns, user ticks" of every thread of process $1.
cpu_of() {
    python3 - "$1" <<'PY'
import glob, sys
ns = ticks = 0
for task in glob.glob(f"/proc/{sys.argv[1]}/task/*"):
    try:
        ns += int(open(f"{task}/schedstat").read().split()[0])
        # utime is field 14; fields after the ")" that ends the thread's name start at 3.
        ticks += int(open(f"{task}/stat").read().rsplit(")", 1)[1].split()[11])
    except (OSError, IndexError, ValueError):
        pass  # a thread that ended between the listing and the read
print(ns, ticks)
PY
}

# One round against port $1, process $2: "requests cpu_ns user_ticks".
round() {
    local before after requests
    before=$(cpu_of "$2")
    wrk -t1 -c32 -d"${round_secs}s" -s "$work/post.lua" "http://127.0.0.1:$1/resource_server/v1/chat/completions" >"$work/round.wrk"
    after=$(cpu_of "$2")
    if grep -q "Non-2xx" "$work/round.wrk"; then
        echo "errors from the gateway on port $1:" >&2; cat "$work/round.wrk" >&2; exit 1
    fi
    requests=$(grep -oE "^ +[0-9]+ requests" "$work/round.wrk" | grep -oE "[0-9]+")
    echo "$requests $before $after"
}

echo "warming up both builds" >&2
for port in $a_port $b_port; do
    wrk -t1 -c32 -d2s -s "$work/post.lua" "http://127.0.0.1:$port/resource_server/v1/chat/completions" >/dev/null
done
for i in $(seq "$pairs"); do
    if [ $((i % 2)) = 1 ]; then
        a=$(round $a_port $a_pid); b=$(round $b_port $b_pid)
    else
        b=$(round $b_port $b_pid); a=$(round $a_port $a_pid)
    fi
    echo "$a $b"
done >"$work/pairs.txt"

python3 - "$work/pairs.txt" "$old" "$new" "$shape" "$pairs" "$round_secs" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, old, new, shape, pairs, secs, hz = sys.argv[1:]
hz = int(hz)
rows = []
for line in open(path):
    ra, a0, au0, a1, au1, rb, b0, bu0, b1, bu1 = map(int, line.split())
    rows.append(((a1 - a0) / 1e3 / ra, (au1 - au0) * 1e6 / hz / ra,
                 (b1 - b0) / 1e3 / rb, (bu1 - bu0) * 1e6 / hz / rb))
print(f"ABBA, shape `{shape}`, {pairs} pairs of {secs} s rounds, wrk 1 thread 32 connections")
print(f"A = {old}\nB = {new}")
print(f"{'pair':>4} {'A us/req':>9} {'B us/req':>9} {'B/A':>6}")
for i, (a, _, b, _) in enumerate(rows, 1):
    print(f"{i:>4} {a:9.2f} {b:9.2f} {b / a:6.3f}")
ratios = [b / a for a, _, b, _ in rows]
user = [bu / au for _, au, _, bu in rows if au > 0]
print(f"CPU a request (on-CPU time of every thread, schedstat): A {statistics.median(r[0] for r in rows):.2f} us, "
      f"B {statistics.median(r[2] for r in rows):.2f} us (medians)")
print(f"B/A: median pair {statistics.median(ratios):.3f} (pairs {min(ratios):.3f} to {max(ratios):.3f})")
if user:
    print(f"B/A of user time (10 ms ticks, coarse): median pair {statistics.median(user):.3f}")
PY
