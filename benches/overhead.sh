#!/usr/bin/env bash
# Gateway overhead benchmark: the same wrk load (keep-alive, fixed connections), in one run,
# non-streaming chat, 256-chunk SSE streams sent in one burst, and 256-chunk streams whose
# events come 2 ms apart (each reaches the proxy alone, as tokens from a GPU server do),
# against
#   direct        the mock backend itself
#   gateway       inference-gateway, no plugins, metrics off
#   gw+metrics    ... with the Prometheus listener on
#   gw+all        ... with globus_auth (mock Globus, cached token), rate_limits (memory),
#                 access_log and metrics: the production shape
#   gw+lim-mem    ... with rate_limits only (memory)
#   gw+lim-redis  ... with rate_limits only (a local redis-server)
#   nginx         nginx proxy_pass, the plain-proxy baseline
# and prints req/s, p50/p99 latency, each proxy's CPU per request (and per streamed chunk)
# from the proxy process's own CPU time (/proc/PID/stat, user + system, and each apart: the
# kernel's part is the sockets' work, much the same for every proxy), and ratios.
#
# The backend is `mock-fast` (pre-rendered answers, one write a request or a burst stream,
# multi-threaded), so the proxies are what is measured: the script refuses to print a run's
# ratios when direct-to-mock is not at least 2.5x the fastest proxy's rate, and says so. The
# paced streams' rate is set by the pacing; there only CPU per chunk is compared. With 3 or
# more cores it pins wrk, the mock and the proxies to separate cores; it says what it did.
# On 2 cores SPLIT=1 puts wrk and the mock on core 0 and the proxies on core 1: direct then
# shares a core with wrk and shows no headroom, so the check is the proxies' own instead:
# ratios are printed when the gateway, gw+all and nginx each kept core 1 at least 90 % busy
# (a proxy that saturates a core of its own is what limits its rate).
# Everything listens on 127.0.0.1. Latency at a fixed rate and memory: benches/latency.sh.
#
#   benches/overhead.sh [duration_seconds=10] [connections=32] [rounds=duration/2]
#
# Each target's time is cut into rounds (2 s at least), and the rounds of one load shape go
# round-robin over the targets: on a shared host the machine's speed drifts by tens of percent
# within a minute, and one long window a target would compare different moments. Figures
# sum the rounds (requests, CPU); p50 is the rounds' median, p99 their worst.
#
# Needs: a release build (cargo build --release --workspace --bins), wrk, nginx and
# redis-server (apt-get install wrk nginx-light redis-server). Results go to stdout and
# bench-results/overhead.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
connections=${2:-32}
rounds=${3:-$(( duration / 2 > 0 ? duration / 2 : 1 ))}
round_seconds=$(( duration / rounds ))
if [ "$round_seconds" -lt 2 ]; then
    echo "each of $rounds rounds would run under 2 s: give a longer duration or fewer rounds" >&2
    exit 2
fi
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
# Separate cores for the load generator, the mock and the proxies when there are enough.
cores=$(nproc)
if [ "$cores" -ge 3 ]; then
    on_load="taskset -c 0" on_mock="taskset -c 1" on_proxy="taskset -c 2-$((cores - 1))"
    placement="$cores cores: wrk on core 0, mock on core 1, proxies on cores 2-$((cores - 1))"
elif [ "$cores" = 2 ] && [ "${SPLIT:-0}" = 1 ]; then
    # Each proxy alone on a core: its rate is its own wherever it keeps that core busy.
    on_load="taskset -c 0" on_mock="taskset -c 0" on_proxy="taskset -c 1"
    placement="2 cores, split: wrk and mock on core 0, proxies on core 1"
else
    on_load="" on_mock="" on_proxy=""
    placement="$cores cores, shared by wrk, mock and proxy (not pinned: that needs 3; SPLIT=1 for core 0 / core 1)"
fi
[ -x target/release/mock-fast ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
$on_mock target/release/mock-fast --listen 127.0.0.1:$mock_port --threads 2 --chunks 256 >"$work/mock.log" 2>&1 &
mock_pid=$!
pids+=($mock_pid)
paced_port=18112
$on_mock target/release/mock-fast --listen 127.0.0.1:$paced_port --threads 2 --chunks 256 --gap-ms 2 \
    --model paced >"$work/paced.log" 2>&1 &
paced_pid=$!
pids+=($paced_pid)
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
backends = [\"127.0.0.1:$mock_port\"]
[[pools]]
name = \"paced\"
cluster = \"local\"
framework = \"vllm\"
models = [\"paced\"]
backends = [\"127.0.0.1:$paced_port\"]"

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
$on_proxy target/release/inference-gateway run --config "$work/gateway-memory.toml" >"$work/gw-mem.out" 2>"$work/gw-mem.err" &
mem_pid=$!
pids+=($mem_pid)
$on_proxy target/release/inference-gateway run --config "$work/gateway-redis.toml" >"$work/gw-redis.out" 2>"$work/gw-redis.err" &
redis_gw_pid=$!
pids+=($redis_gw_pid)
$on_proxy target/release/inference-gateway run --config "$work/gateway-metrics.toml" >"$work/gw-metrics.out" 2>"$work/gw-metrics.err" &
metrics_pid=$!
pids+=($metrics_pid)
$on_proxy target/release/inference-gateway run --config "$work/gateway.toml" >"$work/gw.out" 2>"$work/gw.err" &
gw_pid=$!
pids+=($gw_pid)
BENCH_GLOBUS_SECRET=bench-secret $on_proxy target/release/inference-gateway run --config "$work/gateway-auth.toml" \
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
    upstream paced { server 127.0.0.1:$paced_port; keepalive 64; }
    server {
        listen 127.0.0.1:$nginx_port;
        client_max_body_size 10m;
        location /resource_server/v1/ {
            proxy_pass http://mock/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
        location /paced/resource_server/v1/ {
            proxy_pass http://paced/v1/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
$on_proxy nginx -c "$work/nginx.conf" -g 'daemon off;' &
nginx_master=$!
pids+=($nginx_master)

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer AgBenchToken"
wrk.body = '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"Explain the concept of Globus Compute in simple terms."}],"max_tokens":16}'
LUA
# Each request is one 256-event SSE stream (the mock writes each event on its own, as vLLM does).
cat >"$work/stream.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer AgBenchToken"
wrk.body = '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"Explain the concept of Globus Compute in simple terms."}],"max_tokens":256,"stream":true,"stream_options":{"include_usage":true}}'
LUA
sed 's/"model":"facebook\/opt-125m"/"model":"paced"/' "$work/stream.lua" >"$work/paced.lua"

for port in $paced_port $mock_port $gw_port $nginx_port $auth_port $globus_port $mem_port $redis_gw_port $redis_port $metrics_gw_port; do
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done

nginx_worker=$(pgrep -P "$nginx_master" | head -1)

# CPU ticks a process has used so far: "user system".
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# CPU ticks (user + system) of PID's access-log writer thread so far; 0 without one. It copies
# the lines into the log file: the file system's work, apart from the request path's.
log_writer_ticks() {
    local comm
    for comm in /proc/"$1"/task/*/comm; do
        if [ "$(cat "$comm" 2>/dev/null)" = access-log ]; then
            awk '{print $14 + $15}' "${comm%comm}stat"
            return
        fi
    done
    echo 0
}

# run KIND NAME URL PID ROUND: prints "KIND NAME rps p50_ms p99_ms non2xx requests user_ticks
# sys_ticks log_ticks" for one round; PID is the process whose CPU time is counted (the proxy;
# the mock for `direct`), log_ticks its access-log writer's part of it. The first round warms
# keep-alive pools and caches first.
run() {
    local kind=$1 name=$2 url=$3 pid=$4 round=$5
    local script="$work/post.lua"
    [ "$kind" = stream ] && script="$work/stream.lua"
    [ "$kind" = paced ] && script="$work/paced.lua"
    if [ "$round" = 1 ]; then
        $on_load wrk -t1 -c5 -d2s -s "$script" "$url" >/dev/null
    fi
    local before; read -r -a before < <(cpu_ticks "$pid")
    local log_before; log_before=$(log_writer_ticks "$pid")
    $on_load wrk -t1 -c"$connections" -d"${round_seconds}s" --latency -s "$script" "$url" >"$work/round.txt"
    local after; read -r -a after < <(cpu_ticks "$pid")
    local log_after; log_after=$(log_writer_ticks "$pid")
    python3 - "$kind" "$name" "$work/round.txt" "$((after[0] - before[0]))" "$((after[1] - before[1]))" \
        "$((log_after - log_before))" <<'PY'
import re, sys
kind, name, text = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
user, system, log = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
requests = int(re.search(r"(\d+) requests in", text).group(1))
print(f"{kind} {name} {rps:.1f} {p50:.3f} {p99:.3f} {errors.group(1) if errors else 0} {requests} {user} {system} {log}")
PY
}

api=/resource_server/v1/chat/completions
{
    for kind in plain stream paced; do
        nginx_path=$api
        [ $kind = paced ] && nginx_path=/paced$api
        for round in $(seq "$rounds"); do
            if [ $kind = paced ]; then
                run $kind direct "http://127.0.0.1:$paced_port/v1/chat/completions" "$paced_pid" "$round"
            else
                run $kind direct "http://127.0.0.1:$mock_port/v1/chat/completions" "$mock_pid" "$round"
            fi
            run $kind gateway "http://127.0.0.1:$gw_port$api" "$gw_pid" "$round"
            run $kind gw+all "http://127.0.0.1:$auth_port$api" "$auth_pid" "$round"
            run $kind nginx "http://127.0.0.1:$nginx_port$nginx_path" "$nginx_worker" "$round"
            if [ $kind = plain ]; then
                run $kind gw+metrics "http://127.0.0.1:$metrics_gw_port$api" "$metrics_pid" "$round"
                run $kind gw+lim-mem "http://127.0.0.1:$mem_port$api" "$mem_pid" "$round"
                run $kind gw+lim-redis "http://127.0.0.1:$redis_gw_port$api" "$redis_gw_pid" "$round"
            fi
        done
    done
} >"$work/results"

python3 - "$work/results" "$out" "$duration" "$connections" "$placement" "$rounds" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys, time
CHUNKS = 256
hz = int(sys.argv[7])
# Every round of a target, in order: summed (requests, CPU), medians (rate, p50), worst (p99).
by_target = {}
for line in open(sys.argv[1]):
    kind, name, rps, p50, p99, errors, requests, user, system, log = line.split()
    by_target.setdefault((kind, name), []).append(
        (float(rps), float(p50), float(p99), int(errors), int(requests), int(user), int(system), int(log)))
rows = {"plain": {}, "stream": {}, "paced": {}}
for (kind, name), runs in by_target.items():
    requests = sum(r[4] for r in runs)
    per_request = lambda ticks: ticks / hz * 1e6 / requests if requests else 0.0
    user, system, log = sum(r[5] for r in runs), sum(r[6] for r in runs), sum(r[7] for r in runs)
    rows[kind][name] = dict(rps=statistics.mean(r[0] for r in runs), p50_ms=statistics.median(r[1] for r in runs),
                            p99_ms=max(r[2] for r in runs), non_2xx=sum(r[3] for r in runs),
                            cpu_us=per_request(user + system), user_us=per_request(user), sys_us=per_request(system),
                            log_writer_us=per_request(log),
                            rounds_rps=[round(r[0]) for r in runs])
duration, connections, placement, rounds = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
print(f"wrk, 1 thread, {connections} connections, {duration} s per target in {rounds} interleaved rounds; {placement}")
print("CPU: the proxy process's own user+system time over the run (for `direct`: the mock's), per request;")
print("     user and sys split it: the kernel's share (sockets) is much the same for every proxy")
refused = []
titles = (("plain", "non-streaming chat (16 tokens)"),
          ("stream", f"SSE streams of {CHUNKS} chunks, each stream sent in one burst"),
          ("paced", f"SSE streams of {CHUNKS} chunks, events 2 ms apart (each reaches the proxy alone)"))
for kind, title in titles:
    unit = "req/s" if kind == "plain" else "streams/s"
    print(f"\n{title}")
    extra = "  CPU us/chunk" if kind != "plain" else ""
    print(f"{'target':<12} {unit:>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>11} {'user':>7} {'sys':>7}{extra}")
    for name, r in rows[kind].items():
        per_chunk = f"  {r['cpu_us'] / CHUNKS:>12.3f}" if kind != "plain" else ""
        print(f"{name:<12} {r['rps']:>10.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['non_2xx']:>8} {r['cpu_us']:>11.2f} "
              f"{r['user_us']:>7.2f} {r['sys_us']:>7.2f}{per_chunk}")
    for name, r in rows[kind].items():
        if r["log_writer_us"] > 0:
            print(f"  {name}: {r['log_writer_us']:.2f} us/req of that CPU is its access-log writer thread "
                  f"(copying lines into the log file)")
    proxies = {n: r for n, r in rows[kind].items() if n != "direct"}
    if kind == "paced":
        # The pacing sets the rate; a proxy that falls behind it is saturated, and says so.
        slow = [n for n, r in proxies.items() if r["rps"] < 0.9 * rows[kind]["direct"]["rps"]]
        if slow:
            refused.append(kind)
            print(f"REFUSED: {', '.join(slow)} fell behind the paced rate (saturated): CPU per chunk is not comparable")
        else:
            print("every proxy kept the paced rate: CPU per chunk compares like with like")
        continue
    fastest = max(proxies, key=lambda n: proxies[n]["rps"])
    headroom = rows[kind]["direct"]["rps"] / proxies[fastest]["rps"]
    if placement.startswith("2 cores, split"):
        # The mock shares wrk's core, so direct cannot show headroom; the proxies' own core can:
        # one that keeps it busy (CPU time >= 90 % of the rounds' time) is what limits its rate.
        busy = {n: r["cpu_us"] * r["rps"] * 1e-6 for n, r in proxies.items()}
        idle = [f"{n} {b:.0%}" for n, b in busy.items() if n in ("gateway", "gw+all", "nginx") and b < 0.9]
        if idle:
            refused.append(kind)
            print(f"REFUSED: not every proxy kept its core busy ({', '.join(idle)}): something else limits it")
        else:
            print("each proxy kept its own core busy ("
                  + ", ".join(f"{n} {busy[n]:.0%}" for n in ("gateway", "gw+all", "nginx"))
                  + "): the rates are the proxies' own")
        continue
    if headroom < 2.5:
        refused.append(kind)
        print(f"REFUSED: direct-to-mock is only {headroom:.2f}x the fastest proxy ({fastest}); below 2.5x the mock "
              f"(or the load generator) limits every proxy, so no ratios are reported for this run.")
    else:
        print(f"direct-to-mock is {headroom:.2f}x the fastest proxy ({fastest}): the proxies are what is measured")
ratios = {}
p, s = rows["plain"], rows["stream"]
if "plain" not in refused:
    for gw in ("gateway", "gw+all"):
        ratios[f"{gw}/nginx req/s"] = p[gw]["rps"] / p["nginx"]["rps"]
        ratios[f"{gw}/nginx CPU per request"] = p[gw]["cpu_us"] / p["nginx"]["cpu_us"]
        ratios[f"{gw}/nginx user CPU per request"] = p[gw]["user_us"] / p["nginx"]["user_us"]
        ratios[f"{gw} p50 added ms (vs direct)"] = p[gw]["p50_ms"] - p["direct"]["p50_ms"]
    ratios["gw+all/nginx CPU per request, log writer thread excluded"] = (
        (p["gw+all"]["cpu_us"] - p["gw+all"]["log_writer_us"]) / p["nginx"]["cpu_us"])
    ratios["nginx p50 added ms (vs direct)"] = p["nginx"]["p50_ms"] - p["direct"]["p50_ms"]
    ratios["metrics on/off req/s"] = p["gw+metrics"]["rps"] / p["gateway"]["rps"]
    ratios["limits memory/none req/s"] = p["gw+lim-mem"]["rps"] / p["gateway"]["rps"]
    ratios["limits redis/memory req/s"] = p["gw+lim-redis"]["rps"] / p["gw+lim-mem"]["rps"]
if "stream" not in refused:
    for gw in ("gateway", "gw+all"):
        ratios[f"{gw}/nginx streams/s (burst)"] = s[gw]["rps"] / s["nginx"]["rps"]
        ratios[f"{gw}/nginx CPU per chunk (burst)"] = s[gw]["cpu_us"] / s["nginx"]["cpu_us"]
if "paced" not in refused:
    for gw in ("gateway", "gw+all"):
        ratios[f"{gw}/nginx CPU per chunk (paced)"] = rows["paced"][gw]["cpu_us"] / rows["paced"]["nginx"]["cpu_us"]
if ratios:
    print()
for k, v in ratios.items():
    print(f"{k}: {v:.3f}")
record = dict(time=time.time(), duration_s=int(duration), rounds=int(rounds), connections=int(connections), placement=placement,
              chunks_per_stream=CHUNKS, results=rows, ratios=ratios, refused=refused)
with open(f"{sys.argv[2]}/overhead.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
sys.exit(3 if refused else 0)
PY
