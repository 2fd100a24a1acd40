#!/usr/bin/env bash
# Builds target/release/inference-gateway with profile-guided optimisation (PGO), the build
# the .deb ships: ~10 % less CPU a request than a plain `cargo build --release`
# (benches/README.md, "Runs 35–38: a profile-guided build").
#
#   1. an instrumented build (target/pgo/generate);
#   2. a training run (scripts/pgo-train.py): the instrumented gateway serves non-streaming
#      and streamed chat behind the test kit's mocks, with every request-path feature on,
#      then without plugins, and writes its profile when it stops;
#   3. the profile merged (llvm-profdata of the LLVM that rustc uses);
#   4. the release build with that profile (target/pgo/use), copied over
#      target/release/inference-gateway, where `cargo deb --no-build` and the benchmarks
#      find it.
#
# Needs llvm-profdata for rustc's LLVM major version (`rustc -vV`; on Debian and Ubuntu
# `apt-get install llvm-22` for LLVM 22), wrk and python3. About twice a plain release build's
# time. A later plain `cargo build --release` may put a plain build back in its place.
set -euo pipefail
cd "$(dirname "$0")/.."

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=""
for candidate in "llvm-profdata-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-profdata"; do
    if command -v "$candidate" >/dev/null; then
        profdata=$(command -v "$candidate")
        break
    fi
done
if [ -z "$profdata" ]; then
    echo "build-pgo: needs llvm-profdata for LLVM $llvm (rustc's): apt-get install llvm-$llvm" >&2
    exit 1
fi

work=$PWD/target/pgo
rm -rf "$work/profiles" "$work/merged.profdata"
mkdir -p "$work/profiles"

# The training backends: ordinary release builds.
cargo build --release --quiet -p gateway-testkit --bin mock-fast --bin mock-globus

# `--target` keeps the flags off build scripts and proc macros: only the gateway is profiled.
# The release profile unchanged: with other codegen units, the functions each unit keeps a
# local copy of (most of a request's hot code: `#[inline]` and async state machines) get other
# names, and their counts would not reach the optimised build.
echo "build-pgo: instrumented build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" \
    cargo build --release --quiet --bin inference-gateway --target "$host" --target-dir "$work/generate"

echo "build-pgo: training run"
python3 scripts/pgo-train.py "$work/generate/$host/release/inference-gateway"
"$profdata" merge -o "$work/merged.profdata" "$work/profiles"

echo "build-pgo: optimised build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/merged.profdata" \
    cargo build --release --quiet --bin inference-gateway --target "$host" --target-dir "$work/use"
install -m 755 "$work/use/$host/release/inference-gateway" target/release/inference-gateway
echo "build-pgo: target/release/inference-gateway is the profile-guided build"
