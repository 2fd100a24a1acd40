#!/usr/bin/env bash
# Gateway overhead benchmark (throughput): the same wrk load (non-streaming chat, keep-alive,
# fixed connections), in one run, against
#   direct        the mock backend itself
#   gateway       inference-gateway, no plugins, metrics off
#   gw+metrics    ... with the Prometheus listener on
#   gw+all        ... with globus_auth (mock Globus, cached token), rate_limits (memory),
#                 access_log and metrics: the production shape
#   gw+lim-mem    ... with rate_limits only (memory)
#   gw+lim-redis  ... with rate_limits only (a local redis-server)
#   nginx         nginx proxy_pass, the plain-proxy baseline
# and prints req/s, p50/p99 latency, the proxy's CPU per request, and ratios. Everything
# listens on 127.0.0.1. Latency at a fixed rate, streaming and memory: benches/latency.sh.
#
#   benches/overhead.sh [duration_seconds=10] [connections=32]
#
# Needs: a release build (cargo build --release --workspace --bins), wrk, nginx and
# redis-server (apt-get install wrk nginx-light redis-server). Results go to stdout and
# bench-results/overhead.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
connections=${2:-32}
out=bench-results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

for tool in wrk nginx redis-server; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk nginx-light redis-server" >&2; exit 1; }
done
[ -x target/release/inference-gateway ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }

mock_port=18101 gw_port=18102 nginx_port=18103 auth_port=18104 globus_port=18105
mem_port=18106 redis_gw_port=18107 redis_port=18108 metrics_gw_port=18109
target/release/mock-openai --listen 127.0.0.1:$mock_port --tokens 16 --threads 1 >"$work/mock.log" 2>&1 &
pids+=($!)
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
target/release/mock-globus --listen 127.0.0.1:$globus_port --client-id bench-client \
    --client-secret bench-secret --token AgBenchToken=ada@anl.gov >"$work/globus.log" 2>&1 &
pids+=($!)

pool="[[pools]]
name = \"bench\"
cluster = \"local\"
framework = \"vllm\"
models = [\"facebook/opt-125m\"]
backends = [\"127.0.0.1:$mock_port\"]"

# The plain gateway: no plugins, no metrics.
cat >"$work/gateway.toml" <<TOML
[server]
listen = ["127.0.0.1:$gw_port"]
threads = 1
log_level = "warn"
metrics_listen = ""
$pool
TOML
# The same with metrics on (scraped once at the end, as Prometheus would).
cat >"$work/gateway-metrics.toml" <<TOML
[server]
listen = ["127.0.0.1:$metrics_gw_port"]
threads = 1
log_level = "warn"
metrics_listen = "127.0.0.1:18110"
$pool
TOML
# Limits that admit everything, so each request pays for five checks but is never refused.
limits="[plugins.per_user]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[plugins.per_user_model]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[plugins.per_model]
max_concurrent = 100000"
# The production shape: Globus auth (token cached after its first use), rate limits (memory),
# metrics and the access log.
cat >"$work/gateway-auth.toml" <<TOML
[server]
listen = ["127.0.0.1:$auth_port"]
threads = 1
log_level = "warn"
metrics_listen = "127.0.0.1:18111"
[[plugins]]
kind = "access_log"
path = "$work/access.log"
[[plugins]]
kind = "globus_auth"
client_id = "bench-client"
client_secret_env = "BENCH_GLOBUS_SECRET"
introspect_url = "http://127.0.0.1:$globus_port/v2/oauth2/token/introspect"
token_url = "http://127.0.0.1:$globus_port/v2/oauth2/token"
groups_url = "http://127.0.0.1:$globus_port/v2/groups/my_groups"
[[plugins]]
kind = "rate_limits"
$limits
$pool
TOML
for variant in memory redis; do
    port=$mem_port; [ $variant = redis ] && port=$redis_gw_port
    cat >"$work/gateway-$variant.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
log_level = "warn"
metrics_listen = ""
[[plugins]]
kind = "rate_limits"
backend = "$variant"
$( [ $variant = redis ] && echo "redis_url = \"redis://127.0.0.1:$redis_port/\"" )
$limits
$pool
TOML
done
target/release/inference-gateway run --config "$work/gateway-memory.toml" >"$work/gw-mem.out" 2>"$work/gw-mem.err" &
mem_pid=$!
pids+=($mem_pid)
target/release/inference-gateway run --config "$work/gateway-redis.toml" >"$work/gw-redis.out" 2>"$work/gw-redis.err" &
redis_gw_pid=$!
pids+=($redis_gw_pid)
target/release/inference-gateway run --config "$work/gateway-metrics.toml" >"$work/gw-metrics.out" 2>"$work/gw-metrics.err" &
metrics_pid=$!
pids+=($metrics_pid)
target/release/inference-gateway run --config "$work/gateway.toml" >"$work/gw.out" 2>"$work/gw.err" &
gw_pid=$!
pids+=($gw_pid)
BENCH_GLOBUS_SECRET=bench-secret target/release/inference-gateway run --config "$work/gateway-auth.toml" \
    >"$work/gw-auth.out" 2>"$work/gw-auth.err" &
auth_pid=$!
pids+=($auth_pid)

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work;
    proxy_temp_path $work;
    upstream mock { server 127.0.0.1:$mock_port; keepalive 64; }
    server {
        listen 127.0.0.1:$nginx_port;
        client_max_body_size 10m;
        location /resource_server/v1/ {
            proxy_pass http://mock/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' &
nginx_master=$!
pids+=($nginx_master)

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer AgBenchToken"
wrk.body = '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"Explain the concept of Globus Compute in simple terms."}],"max_tokens":16}'
LUA

for port in $mock_port $gw_port $nginx_port $auth_port $globus_port $mem_port $redis_gw_port $redis_port $metrics_gw_port; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done

nginx_worker=$(pgrep -P "$nginx_master" | head -1)

# CPU ticks (user + system) a process has used so far.
cpu_ticks() { [ -n "${1:-}" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

# run NAME URL [PID]: prints "NAME rps p50_ms p99_ms non2xx cpu_us_per_request"
run() {
    local name=$1 url=$2 pid=${3:-}
    wrk -t1 -c5 -d2s -s "$work/post.lua" "$url" >/dev/null   # warm keep-alive pools and caches
    local before; before=$(cpu_ticks "$pid")
    wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "$url" >"$work/$name.txt"
    local after; after=$(cpu_ticks "$pid")
    python3 - "$name" "$work/$name.txt" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import re, sys
name, text = sys.argv[1], open(sys.argv[2]).read()
ticks, hz = int(sys.argv[3]), int(sys.argv[4])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
requests = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = ticks / hz * 1e6 / requests if ticks else 0
print(f"{name} {rps:.0f} {p50:.3f} {p99:.3f} {errors.group(1) if errors else 0} {cpu_us:.1f}")
PY
}

{
    run direct "http://127.0.0.1:$mock_port/v1/chat/completions"
    run gateway "http://127.0.0.1:$gw_port/resource_server/v1/chat/completions" "$gw_pid"
    run gw+metrics "http://127.0.0.1:$metrics_gw_port/resource_server/v1/chat/completions" "$metrics_pid"
    run gw+all "http://127.0.0.1:$auth_port/resource_server/v1/chat/completions" "$auth_pid"
    run gw+lim-mem "http://127.0.0.1:$mem_port/resource_server/v1/chat/completions" "$mem_pid"
    run gw+lim-redis "http://127.0.0.1:$redis_gw_port/resource_server/v1/chat/completions" "$redis_gw_pid"
    run nginx "http://127.0.0.1:$nginx_port/resource_server/v1/chat/completions" "$nginx_worker"
} >"$work/results"

python3 - "$work/results" "$out" "$duration" "$connections" <<'PY'
import json, sys, time
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, errors, cpu = line.split()
    rows[name] = dict(rps=float(rps), p50_ms=float(p50), p99_ms=float(p99), non_2xx=int(errors), cpu_us_per_req=float(cpu))
print(f"non-streaming chat, {sys.argv[4]} connections, {sys.argv[3]} s each, 2 cores shared by load generator, proxy and mock")
print(f"{'target':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'proxy CPU us/req':>17}")
for name, r in rows.items():
    print(f"{name:<12} {r['rps']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['non_2xx']:>8} {r['cpu_us_per_req']:>17.1f}")
g, a, d, n = rows["gateway"], rows["gw+all"], rows["direct"], rows["nginx"]
ratios = {
    "gateway/direct throughput": g["rps"] / d["rps"],
    "gateway/nginx throughput": g["rps"] / n["rps"],
    "gateway+all/direct throughput": a["rps"] / d["rps"],
    "gateway+all/nginx throughput": a["rps"] / n["rps"],
    "metrics on/off throughput": rows["gw+metrics"]["rps"] / g["rps"],
    "limits memory/none throughput": rows["gw+lim-mem"]["rps"] / g["rps"],
    "limits redis/none throughput": rows["gw+lim-redis"]["rps"] / g["rps"],
    "limits redis/memory throughput": rows["gw+lim-redis"]["rps"] / rows["gw+lim-mem"]["rps"],
    "gateway p50 added ms (vs direct)": g["p50_ms"] - d["p50_ms"],
    "gateway+all p50 added ms (vs direct)": a["p50_ms"] - d["p50_ms"],
    "nginx p50 added ms (vs direct)": n["p50_ms"] - d["p50_ms"],
}
for k, v in ratios.items():
    print(f"{k}: {v:.3f}")
record = dict(time=time.time(), duration_s=int(sys.argv[3]), connections=int(sys.argv[4]), results=rows, ratios=ratios)
with open(f"{sys.argv[2]}/overhead.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
PY
