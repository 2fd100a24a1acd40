#!/usr/bin/env bash
# Instructions per request (valgrind --tool=callgrind): repeatable on a shared machine, and
# fit to compare two builds of the gateway. The gateway runs under callgrind behind the
# test kit's mock; after a warm-up the counters are zeroed, wrk sends non-streaming chat
# requests on 4 keep-alive connections, and the counters are dumped: instructions in the
# dump / requests wrk completed = instructions per request, whole process (all threads).
#
#   benches/callgrind.sh [gateway-binary=target/release/inference-gateway] [seconds=15]
#
# STREAM=1 asks for streamed answers instead (256 content events, a usage event and [DONE]
# a request; CHUNKS=N for another count), and also prints instructions per content chunk:
# how a change to the per-chunk path shows its cost. Compare two builds in one run. The mock
# sends each stream in one burst; GAP_MS=N sends its events N ms apart instead, so that each
# reaches the gateway alone, as tokens from a GPU server do. SDK=1 sends the request header
# the `openai` Python SDK sends (3.57.0: eighteen headers, `x-stainless-*` among them)
# instead of wrk's four: what a header costs shows.
#
# Two shapes: `bare` (no plugins, metrics off) and `all` (globus_auth with a cached token,
# rate_limits in memory with five admitting checks, access_log, metrics). The backend is
# `mock-fast` (pre-rendered answers). Needs a release build of the workspace (for mock-fast,
# mock-globus), wrk and valgrind
# (apt-get install wrk valgrind). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib/plugins.sh
. benches/lib/plugins.sh

gateway=${1:-target/release/inference-gateway}
seconds=${2:-15}
for tool in wrk valgrind callgrind_control; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk valgrind" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; if [ -n "${KEEP:-}" ]; then cp "$work"/cg.* "$KEEP"/ 2>/dev/null || true; fi; rm -rf "$work"; }
trap cleanup EXIT

mock_port=18201 globus_port=18202 gw_port=18203
chunks=${CHUNKS:-256}
target/release/mock-fast --listen 127.0.0.1:$mock_port --threads 1 --chunks "$chunks" --gap-ms "${GAP_MS:-0}" \
    >"$work/mock.log" 2>&1 &
pids+=($!)
target/release/mock-globus --listen 127.0.0.1:$globus_port --client-id bench-client \
    --client-secret bench-secret --token AgBenchToken=ada@anl.gov >"$work/globus.log" 2>&1 &
pids+=($!)
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer AgBenchToken"
wrk.body = '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"Explain the concept of Globus Compute in simple terms."}],"max_tokens":16STREAM_FIELD}'
LUA
stream_field=""
[ -n "${STREAM:-}" ] && stream_field=',"stream":true'
sed -i "s/STREAM_FIELD/$stream_field/" "$work/post.lua"
if [ -n "${SDK:-}" ]; then
    # As captured from the SDK; wrk adds Host and Content-Length.
    cat >>"$work/post.lua" <<'LUA'
wrk.headers["Accept-Encoding"] = "gzip, deflate"
wrk.headers["Connection"] = "keep-alive"
wrk.headers["accept"] = "application/json"
wrk.headers["user-agent"] = "OpenAI/Python 3.57.0"
wrk.headers["x-stainless-lang"] = "python"
wrk.headers["x-stainless-package-version"] = "3.57.0"
wrk.headers["x-stainless-os"] = "Linux"
wrk.headers["x-stainless-arch"] = "x64"
wrk.headers["x-stainless-runtime"] = "CPython"
wrk.headers["x-stainless-runtime-version"] = "3.11.7"
wrk.headers["x-stainless-async"] = "false"
wrk.headers["x-stainless-retry-count"] = "0"
wrk.headers["x-stainless-read-timeout"] = "600"
LUA
fi

wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

config() {
    local plugins=""
    if [ "$1" = all ]; then
        plugins=$(all_plugins "$work/access.log" "$globus_port")
    fi
    local metrics='""'
    [ "$1" = all ] && metrics='"127.0.0.1:18204"'
    cat <<TOML
[server]
listen = ["127.0.0.1:$gw_port"]
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

wait_port $mock_port
wait_port $globus_port
for shape in bare all; do
    config "$shape" >"$work/$shape.toml"
    BENCH_GLOBUS_SECRET=bench-secret valgrind --tool=callgrind --callgrind-out-file="$work/cg.$shape.%p" \
        "$gateway" run --config "$work/$shape.toml" >"$work/$shape.out" 2>"$work/$shape.err" &
    vg=$!
    wait_port $gw_port
    wrk -t1 -c4 -d3s -s "$work/post.lua" "http://127.0.0.1:$gw_port/resource_server/v1/chat/completions" >/dev/null
    callgrind_control -z "$vg" >/dev/null 2>&1
    wrk -t1 -c4 -d"${seconds}s" -s "$work/post.lua" "http://127.0.0.1:$gw_port/resource_server/v1/chat/completions" >"$work/$shape.wrk"
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true
    python3 - "$shape" "$work/$shape.wrk" "$work" "${STREAM:+$chunks}" <<'PY'
import glob, re, sys
shape, wrk, work, chunks = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3], sys.argv[4]
requests = int(re.search(r"(\d+) requests in", wrk).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
# The dump taken right after the zeroed run ends in ".1"; the final one at exit is the rest.
dumps = sorted(glob.glob(f"{work}/cg.{shape}.*.1"))
total = 0
for line in open(dumps[0]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
        break
per_chunk = f", {total / requests / int(chunks):.0f} a content chunk" if chunks else ""
print(f"{shape}: {requests} requests, {total / requests / 1000:.1f} k instructions a request{per_chunk}"
      + (f" ({errors.group(1)} non-2xx!)" if errors else ""))
PY
done
