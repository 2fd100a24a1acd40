#!/usr/bin/env bash
# Memory per open stream, at steady state: N SSE streams held open at once through
#   gateway   inference-gateway, no plugins, metrics off
#   gw+all    ... with globus_auth (mock Globus, cached token), rate_limits (memory), access_log
#             and metrics: the production shape
#   nginx     proxy_pass, upstream keep-alive, proxy_buffering off (a reference)
# with a short prompt and with a 32 KB one. Each measurement uses a fresh proxy, warmed up by
# a few requests; its VmRSS is read before the streams open and, once they all are and a few
# seconds have passed, as the median of 2 s of samples (benches/hold_streams.py). The backend
# (mock-fast) sends one event a second, so the streams stay open while they are measured.
# Peak RSS during a burst would count the allocator's slack; this does not.
#
#   benches/memory.sh [streams=2000]          (TARGETS="gateway nginx" for fewer)
#
# GATEWAY=path measures another build of the gateway (e.g. the previous commit's, to see
# what a change did); the mocks still come from target/release.
#
# A proxied stream holds two descriptors in the proxy; the script says when the host's limit
# cannot hold the count asked for and measures what it can. Everything listens on 127.0.0.1.
# Needs a release build and nginx. Results go to stdout and bench-results/memory.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

streams=${1:-2000}
out=bench-results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
# Two descriptors a stream in the proxy, and the 512 the gateway keeps for everything else
# (src/descriptors.rs): what it serves at most under this limit.
fits=$(( (limit - 512) / 2 ))
if [ "$streams" -gt "$fits" ]; then
    echo "this host allows $limit open files: holding $fits streams, not $streams" >&2
    streams=$fits
fi
for tool in nginx python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
for bin in inference-gateway mock-fast mock-globus; do
    [ -x target/release/$bin ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
done

mock=18301 gw=18302 globus=18303 nginx_port=18304
# 600 events a second apart: a stream lasts 10 minutes unless its client goes.
target/release/mock-fast --listen 127.0.0.1:$mock --threads 1 --chunks 600 --gap-ms 1000 >"$work/mock.log" 2>&1 &
pids+=($!)
target/release/mock-globus --listen 127.0.0.1:$globus --client-id bench-client --client-secret bench-secret \
    --token AgBenchToken=ada@anl.gov >"$work/globus.log" 2>&1 &
pids+=($!)

pool="[[pools]]
name = \"bench\"
cluster = \"local\"
framework = \"vllm\"
models = [\"facebook/opt-125m\"]
backends = [\"127.0.0.1:$mock\"]"
server="[server]
listen = [\"127.0.0.1:$gw\"]
threads = 1
log_level = \"warn\"
max_connections = $streams"
printf '%s\nmetrics_listen = ""\n%s\n' "$server" "$pool" >"$work/gateway.toml"
cat >"$work/gw+all.toml" <<TOML
$server
metrics_listen = "127.0.0.1:18305"
[[plugins]]
kind = "access_log"
path = "$work/access.log"
[[plugins]]
kind = "globus_auth"
client_id = "bench-client"
client_secret_env = "BENCH_GLOBUS_SECRET"
introspect_url = "http://127.0.0.1:$globus/v2/oauth2/token/introspect"
token_url = "http://127.0.0.1:$globus/v2/oauth2/token"
groups_url = "http://127.0.0.1:$globus/v2/groups/my_groups"
[[plugins]]
kind = "rate_limits"
[plugins.per_user]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[plugins.per_model]
max_concurrent = 1000000
$pool
TOML
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
worker_rlimit_nofile $limit;
events { worker_connections $((streams * 3 + 200)); }
http {
    access_log off;
    client_body_temp_path $work;
    proxy_temp_path $work;
    upstream mock { server 127.0.0.1:$mock; keepalive 64; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
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

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }
wait_port $mock
wait_port $globus

start() { # TARGET → sets proxy_pid and port
    case $1 in
    nginx)
        nginx -c "$work/nginx.conf" -g 'daemon off;' &
        pids+=($!)
        port=$nginx_port
        wait_port $port
        proxy_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
        ;;
    *)
        BENCH_GLOBUS_SECRET=bench-secret "${GATEWAY:-target/release/inference-gateway}" run --config "$work/$1.toml" \
            >"$work/$1.out" 2>"$work/$1.err" &
        proxy_pid=$!
        pids+=($proxy_pid)
        port=$gw
        wait_port $port
        ;;
    esac
    # Warm up: pools, caches (the Globus token), lazily built state.
    for _ in $(seq 20); do
        curl -sf -o /dev/null -H 'Authorization: Bearer AgBenchToken' -H 'Content-Type: application/json' \
            -d '{"model":"facebook/opt-125m","messages":[{"role":"user","content":"hi"}]}' \
            "http://127.0.0.1:$port/resource_server/v1/chat/completions" || { echo "$1 does not answer" >&2; exit 1; }
    done
}
stop() {
    if [ "$1" = nginx ]; then kill "$(cat "$work/nginx.pid")"; else kill "$proxy_pid"; fi
    for _ in $(seq 100); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
}

echo "memory per open stream, $streams streams held at once, $(date -u +%F), $(nproc) cores"
printf '%-8s %8s %10s %10s %8s %10s\n' target prompt "RSS before" "RSS held" "held" "KB/stream"
for target in ${TARGETS:-gateway gw+all nginx}; do
    for prompt in 64 32768; do
        start $target
        python3 benches/hold_streams.py --port $port --pid "$proxy_pid" --streams "$streams" \
            --prompt-bytes $prompt --token AgBenchToken --settle "${SETTLE:-3}" >"$work/hold.json" || true
        stop $target
        python3 - "$target" "$work/hold.json" "$out/memory.jsonl" <<'PY'
import json, sys
target, path, out = sys.argv[1:]
r = json.loads(open(path).read().splitlines()[-1])
r["target"] = target
print(f'{target:<8} {r["prompt_bytes"]:>8} {r["rss_kib_before"]/1024:>8.1f}MB {r["rss_kib_held"]/1024:>8.1f}MB '
      f'{r["held_to_the_end"]:>8} {r["kib_per_stream"]*1.024:>10.1f}' + (f'   failures: {r["failures"]} {r["first_failures"]}' if r["failures"] else ""))
open(out, "a").write(json.dumps(r) + "\n")
PY
    done
done
echo "KB/stream: (RSS held - RSS before) / streams held to the end, 1 KB = 1000 bytes"
for log in "$work"/*.err "$work/nginx-error.log"; do
    [ -s "$log" ] && { echo "--- $(basename "$log"), last lines:"; tail -3 "$log"; }
done
exit 0
