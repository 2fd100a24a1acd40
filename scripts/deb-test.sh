#!/usr/bin/env bash
# Builds the .deb (the profile-guided release build of scripts/build-pgo.sh, packaged by
# `cargo deb --no-build`), shows what it holds, installs it on this
# machine with dpkg, validates the installed config with `inference-gateway check`, and starts
# the installed binary as the service account would (with a mock backend) until a health
# request answers; then removes the package. Needs root. Verifies the unit with
# `systemd-analyze verify` where that tool is installed (it needs no running systemd).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
# The users' login tool is packaged too; cargo deb builds only the gateway's own crate.
cargo build --release --quiet -p inference-auth-token
# The gateway as it ships: built with the profile of a training run (~10 % less CPU a request).
./scripts/build-pgo.sh
cargo deb --quiet --no-build -p inference-gateway
deb=$(ls -t target/debian/inference-gateway_*.deb | head -1)
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

dpkg -i "$deb"
trap 'pkill -f "inference-gateway run --config /etc/inference-gateway" || true; kill ${mock:-0} 2>/dev/null || true; dpkg --purge inference-gateway >/dev/null || true' EXIT
getent passwd inference-gateway >/dev/null
test "$(stat -c '%a %G' /etc/inference-gateway/gateway.toml)" = "640 inference-gateway"
runuser -u inference-gateway -- /usr/bin/inference-gateway check --config /etc/inference-gateway/gateway.toml
# The login tool runs for any user and reads the site's config file.
test "$(stat -c '%a' /etc/inference-auth-token/config.toml)" = "644"
runuser -u nobody -- env HOME=/tmp/deb-test-home /usr/bin/inference-auth-token \
    --client-id 58fdd3bc-0000-4000-8000-000000000001 --gateway-client-id 681c10cc-0000-4000-8000-000000000002 config \
    | grep -q '/etc/inference-auth-token/config.toml\|built-in default'
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/inference-gateway.service
    echo "systemd-analyze verify: the unit is valid"
else
    echo "(systemd-analyze is not installed here: unit verification skipped)"
fi

# The default config routes facebook/opt-125m to 127.0.0.1:8001: the test kit's mock there.
# A debug build: a test helper, not what ships (and already built by scripts/test.sh in CI).
cargo build -q -p gateway-testkit --bin mock-openai
target/debug/mock-openai --listen 127.0.0.1:8001 >/dev/null 2>&1 &
mock=$!
runuser -u inference-gateway -- /usr/bin/inference-gateway run --config /etc/inference-gateway/gateway.toml \
    >/tmp/deb-test-gateway.log 2>&1 &
for _ in $(seq 1 100); do
    if curl -fsS http://127.0.0.1:8000/resource_server/health >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
curl -fsS http://127.0.0.1:8000/resource_server/health
echo
curl -fsS http://127.0.0.1:8000/resource_server/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "facebook/opt-125m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}' \
    | grep -q chat.completion
echo "installed package: config valid, service account starts it, it answers"
