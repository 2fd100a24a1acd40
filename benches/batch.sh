#!/usr/bin/env bash
# Batch jobs: how fast the batch engine works through a path-based batch, and what it holds
# in memory meanwhile. Against the test kit's mock backend (`mock-openai`, one thread, 16
# tokens an answer, no delays: 0 ms to the first token and between tokens), so the gateway,
# not the model, is the bottleneck. Each run starts a fresh gateway (threads = 2, no metrics,
# no access log; its own state directory, so every run begins with an empty job store) and
# submits one batch of guide-format lines (`{"messages": [...], "max_tokens": 16}`, a
# different question on each) as user bench (an API key), then polls it every 100 ms:
#
#   small-32/64  LINES lines, pool batch_max_in_flight = 32, batch_when_below = 64
#   small-4/8    the same with the pool defaults, 4 and 8 (skipped with DEFAULTS=0)
#   big-32/64    BIG_LINES lines (`[batch] max_lines` is set to it), 32/64 (skipped with
#                BIG_LINES=0), to compare its RSS peaks with the small one's: the file is
#                read line by line, never held whole
#
# Each run reports: the POST's time (it reads, validates and stores every line before it
# answers); lines a second from sending the POST to the first poll (GET /v1/batches/<id>)
# that shows `completed`, and by the batch's own summary.json (created, after validation, to
# its end); the gateway's RSS (VmRSS from /proc/<pid>/status, sampled every 100 ms) before
# the POST, at its peak during the POST and during the run, and 1 s after; the gateway's
# and the mock's CPU (utime + stime from /proc/<pid>/stat, over POST to completed, polls
# included) per line. Every run is checked, so the figures cannot come from work not done:
# results.jsonl must hold one answer with status 200 for each of line-1..line-N and nothing
# else, errors.jsonl must be empty, and summary.json must count N completed, 0 failed.
# Everything listens on 127.0.0.1.
#
#   benches/batch.sh [LINES=10000] [BIG_LINES=100000]
#
# Does not build: it runs this checkout's target/release binaries (cargo build --release
# --workspace --bins first). 75 to 90 s on the 2-core development machine. Results go
# to stdout and bench-results/batch.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

lines=${1:-10000}
big_lines=${2:-100000}
defaults=${DEFAULTS:-1}
max_lines=$((big_lines > lines ? big_lines : lines))
gw_bin=target/release/inference-gateway
mock_bin=target/release/mock-openai
for b in "$gw_bin" "$mock_bin"; do
    [ -x "$b" ] || { echo "missing $b: cargo build --release --workspace --bins" >&2; exit 1; }
done
out=bench-results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mock_port=18121 gw_port=18122
key=bench-batch-key
key_sha=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
home=$work/home/bench
mkdir -p "$home/out"
hz=$(getconf CLK_TCK)

"$mock_bin" --listen 127.0.0.1:$mock_port --tokens 16 --threads 1 >"$work/mock.log" 2>&1 &
mock_pid=$!
pids+=($mock_pid)

# Input files: the guide's shape, a different question on every line.
python3 - "$home" "$lines" "$big_lines" <<'PY'
import json, sys
home, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for name, count in (("small.jsonl", n), ("big.jsonl", big)):
    with open(f"{home}/{name}", "w") as f:
        for i in range(count):
            q = f"Question {i}: explain the concept of Globus Compute in simple terms."
            f.write(json.dumps({"messages": [{"role": "user", "content": q}], "max_tokens": 16}) + "\n")
PY

for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$mock_port) 2>/dev/null && break; sleep 0.05; done

now() { date +%s.%N; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start_gateway NAME IN_FLIGHT WHEN_BELOW: a fresh gateway on its own state; sets gw_pid.
start_gateway() {
    local dir=$work/$1
    mkdir -p "$dir"
    cat >"$dir/gateway.toml" <<TOML
[server]
listen = ["127.0.0.1:$gw_port"]
threads = 2
log_level = "warn"
metrics_listen = ""

[[plugins]]
kind = "api_keys"
[[plugins.keys]]
sha256 = "$key_sha"
username = "bench@anl.gov"
groups = []

[[pools]]
name = "bench"
cluster = "local"
framework = "vllm"
models = ["facebook/opt-125m"]
backends = ["127.0.0.1:$mock_port"]
batch_max_in_flight = $2
batch_when_below = $3

[batch]
state_dir = "$dir/state"
allowed_input_roots = ["$work/home/{user}"]
allowed_output_roots = ["$work/home/{user}"]
max_lines = $max_lines
TOML
    "$gw_bin" run --config "$dir/gateway.toml" >"$dir/gw.out" 2>"$dir/gw.err" &
    gw_pid=$!
    pids+=($gw_pid)
    for _ in $(seq 200); do
        curl -sf -o /dev/null "http://127.0.0.1:$gw_port/resource_server/health" && return
        kill -0 "$gw_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "gateway $1 did not start:" >&2; cat "$dir/gw.err" >&2; exit 1
}

stop_gateway() { kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; }

# sampler PID FILE: "epoch_seconds rss_kb" every 100 ms while PID lives; sets sampler_pid.
sampler() {
    python3 - "$1" "$2" <<'PY' &
import sys, time
pid, path = sys.argv[1], sys.argv[2]
with open(path, "w", buffering=1) as f:
    while True:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            break
        f.write(f"{time.time():.3f} {status.split('VmRSS:')[1].split()[0]}\n")
        time.sleep(0.1)
PY
    sampler_pid=$!
    pids+=($sampler_pid)
}

api=http://127.0.0.1:$gw_port/resource_server/v1
submit() { # INPUT_FILE: prints the answer's body, fails on a non-200
    curl -sS --fail-with-body -m 300 -X POST "$api/batches" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' \
        -d "{\"input_file_path\": \"$1\", \"output_folder_path\": \"$home/out\", \"model\": \"facebook/opt-125m\"}"
}
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$1"; }

# run NAME INPUT IN_FLIGHT WHEN_BELOW: one batch of INPUT (in $home), submitted, polled to
# `completed` and checked; appends a JSON record to $work/records.
run() {
    local name=$1 input=$home/$2.jsonl dir=$work/$1
    local n; n=$(wc -l <"$input")
    start_gateway "$name" "$3" "$4"
    sleep 0.5
    sampler "$gw_pid" "$dir/rss"
    sleep 0.3
    local base_rss gw0 mock0 t0 t1 t2 gw1 mock1 answer id status=
    base_rss=$(rss_kb "$gw_pid")
    gw0=$(cpu_ticks "$gw_pid") mock0=$(cpu_ticks "$mock_pid")
    t0=$(now)
    answer=$(submit "$input") || { echo "$name: the POST failed: $answer" >&2; exit 1; }
    t1=$(now)
    id=$(field id <<<"$answer")
    for _ in $(seq 2400); do   # at most 4 minutes
        status=$(curl -sS -H "Authorization: Bearer $key" "$api/batches/$id" | grep -o '"status":"[a-z_]*"' | cut -d'"' -f4) || true
        case $status in completed | failed | expired | cancelled) break ;; esac
        sleep 0.1
    done
    t2=$(now)
    gw1=$(cpu_ticks "$gw_pid") mock1=$(cpu_ticks "$mock_pid")
    [ "$status" = completed ] || { echo "$name: batch $id is $status" >&2; cat "$dir/gw.err" >&2; exit 1; }
    sleep 1
    local after_rss; after_rss=$(rss_kb "$gw_pid")
    kill "$sampler_pid"
    stop_gateway
    python3 - "$name" "$3" "$4" "$n" "$home/out/${2}_opt-125m_$id" "$dir/rss" "$base_rss" \
        "$after_rss" "$t0" "$t1" "$t2" "$((gw1 - gw0))" "$((mock1 - mock0))" "$hz" \
        "$(stat -c %s "$input")" >>"$work/records" <<'PY'
import json, sys
(name, inflight, below, n, folder, rss_path, base, after, t0, t1, t2, gw_ticks, mock_ticks,
 hz, size) = sys.argv[1:]
n, t0, t1, t2, hz = int(n), float(t0), float(t1), float(t2), int(hz)
# The work was done: every line answered once, nothing failed.
seen, ok = set(), 0
with open(f"{folder}/results.jsonl") as f:
    for line in f:
        r = json.loads(line)
        seen.add(r["custom_id"])
        ok += r["response"]["status_code"] == 200
assert ok == n and seen == {f"line-{i}" for i in range(1, n + 1)}, \
    f"{ok} answers with status 200, {len(seen)} distinct custom_ids, for {n} lines"
assert open(f"{folder}/errors.jsonl").read() == "", "errors.jsonl is not empty"
summary = json.load(open(f"{folder}/summary.json"))
assert summary["completed"] == n and summary["failed"] == 0, summary
samples = [tuple(map(float, l.split())) for l in open(rss_path)]
peak = lambda a, b: max((kb for t, kb in samples if a <= t <= b), default=0) / 1024
gw_ms, mock_ms = int(gw_ticks) * 1000 / hz, int(mock_ticks) * 1000 / hz
print(json.dumps(dict(
    run=name, batch_max_in_flight=int(inflight), batch_when_below=int(below), lines=n,
    input_bytes=int(size), submit_s=round(t1 - t0, 3), submit_lines_per_s=round(n / (t1 - t0)),
    wall_s=round(t2 - t0, 3), lines_per_s=round(n / (t2 - t0)),
    summary_s=summary["duration_seconds"],
    summary_lines_per_s=round(n / summary["duration_seconds"]),
    rss_base_mb=round(int(base) / 1024, 1), rss_peak_submit_mb=round(peak(t0, t1), 1),
    rss_peak_run_mb=round(peak(t1, t2), 1), rss_after_mb=round(int(after) / 1024, 1),
    gw_cpu_ms=gw_ms, gw_cpu_ms_per_line=round(gw_ms / n, 3),
    mock_cpu_ms=mock_ms, mock_cpu_ms_per_line=round(mock_ms / n, 3), rss_samples=len(samples))))
PY
}

: >"$work/records"
run "small-32/64" small 32 64
[ "$defaults" = 0 ] || run "small-4/8" small 4 8
[ "$big_lines" = 0 ] || run "big-32/64" big 32 64

python3 - "$work/records" "$out" <<'PY'
import json, os, sys, time
recs = [json.loads(l) for l in open(sys.argv[1])]
print(f"batch jobs against mock-openai (1 thread, 0 ms delays, 16 tokens); gateway threads = 2; "
      f"{os.cpu_count()} cores shared by gateway, mock and this script")
for r in recs:
    print(f"{r['run']:<12} {r['lines']} lines, input {r['input_bytes'] / 1e6:.2f} MB, "
          f"batch_max_in_flight {r['batch_max_in_flight']}, batch_when_below {r['batch_when_below']}")
    print(f"  POST (validate + store) {r['submit_s']:.2f} s ({r['submit_lines_per_s']} lines/s); "
          f"POST -> completed {r['wall_s']:.2f} s = {r['lines_per_s']} lines/s; "
          f"summary.json {r['summary_s']:.2f} s = {r['summary_lines_per_s']} lines/s")
    print(f"  gateway RSS MB: before {r['rss_base_mb']}, peak during POST {r['rss_peak_submit_mb']}, "
          f"peak during run {r['rss_peak_run_mb']}, 1 s after {r['rss_after_mb']}")
    print(f"  CPU: gateway {r['gw_cpu_ms']:.0f} ms = {r['gw_cpu_ms_per_line']:.3f} ms/line, "
          f"mock {r['mock_cpu_ms']:.0f} ms = {r['mock_cpu_ms_per_line']:.3f} ms/line")
print("checked: every run's results.jsonl has each line once with status 200, errors.jsonl is empty")
with open(f"{sys.argv[2]}/batch.jsonl", "a") as f:
    f.write(json.dumps(dict(time=time.time(), runs=recs)) + "\n")
PY
