#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a bounded time each:
#
#   policy_decide     Policy::decide on arbitrary bytes, directly and after http::Uri
#                     parsing; an allowed target must also pass the target invariants.
#   config_load_toml  config::load_toml on arbitrary text must not panic.
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
# Environment:
#   FUZZ_SECONDS    seconds of fuzzing per target (default 60); 0 builds the targets,
#                   runs each over its seed corpus once, and stops
#   FUZZ_SANITIZER  none (default) or address
#   FUZZ_CORPUS     folder for the inputs the fuzzer finds, one subfolder per target
#                   (default: a temporary folder, removed on exit)
#
# Toolchain: needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler for
# libFuzzer. cargo-fuzz defaults to AddressSanitizer, whose -Zsanitizer flag needs a nightly
# compiler. With FUZZ_SANITIZER=none no unstable flag is used, so the targets build and run
# on stable Rust; this was checked with rustc 1.95.0 and cargo-fuzz 0.13.2. With
# FUZZ_SANITIZER=address on a stable compiler the script sets RUSTC_BOOTSTRAP=1, which
# makes stable rustc accept the unstable flag, and CARGO_CACHE_RUSTC_INFO=0, because cargo
# caches a failed compiler probe without regard to RUSTC_BOOTSTRAP.
#
# Seeds: fuzz/corpus/<target>/ is read, never written, so the work tree stays clean. A crash
# is saved under fuzz/artifacts/<target>/ (ignored by git) and makes this script exit
# non-zero; replay it with `cargo fuzz run -s none <target> <file>`.
#
# Network use: cargo fetches crates on the first build. The targets send nothing anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
all_targets=(policy_decide config_load_toml)
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2
    exit 2
fi
case "$sanitizer" in
    none) ;;
    address)
        if ! rustc --version | grep -q nightly; then
            export RUSTC_BOOTSTRAP=1
            export CARGO_CACHE_RUSTC_INFO=0
        fi
        ;;
    *)
        echo "fuzz.sh: FUZZ_SANITIZER must be none or address, not '$sanitizer'" >&2
        exit 2
        ;;
esac
for target in "${targets[@]}"; do
    if [[ ! -f "fuzz/fuzz_targets/$target.rs" ]]; then
        echo "fuzz.sh: unknown target '$target'; the targets are ${all_targets[*]}" >&2
        exit 2
    fi
done
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; install it with 'cargo install cargo-fuzz --locked'" >&2
    exit 2
fi

if [[ -n "${FUZZ_CORPUS:-}" ]]; then
    corpus_root="$FUZZ_CORPUS"
else
    corpus_root="$(mktemp -d)"
    trap 'rm -rf "$corpus_root"' EXIT
fi

echo "--- fuzz: sanitizer $sanitizer, $seconds s per target, corpus under $corpus_root"
cargo fuzz build --sanitizer "$sanitizer"

for target in "${targets[@]}"; do
    mkdir -p "$corpus_root/$target"
    if [[ "$seconds" -eq 0 ]]; then
        echo "--- $target: seed corpus only"
        # -runs=0 executes every input of the corpus folders once and exits.
        limits=(-runs=0)
    else
        echo "--- $target: $seconds s"
        limits=(-max_total_time="$seconds" -print_final_stats=1)
    fi
    # libFuzzer writes new inputs to the first folder only; the seed folder after it is
    # only read. -timeout fails an input that runs over 10 s, -rss_limit_mb one over 2 GiB.
    cargo fuzz run --sanitizer "$sanitizer" "$target" \
        "$corpus_root/$target" "fuzz/corpus/$target" -- \
        "${limits[@]}" -timeout=10 -rss_limit_mb=2048
done
echo "--- fuzz: no crash in ${targets[*]}"
