#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 20), from the seeds in fuzz/seeds, with
# a nightly toolchain and cargo-fuzz (both installed here when missing). A finding fails
# the run; its input is kept in fuzz/artifacts/TARGET/. No sanitizer: quietus has no
# unsafe code (`unsafe_code` is forbidden), so what is looked for is panics, overflows
# and runaway inputs, which libFuzzer finds without one.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build --sanitizer none -O
for target in ticket csv_list policy receipt checkpoint; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz: $target for ${seconds}s"
    log="corpus/$target.log"
    if ! cargo +nightly fuzz run --sanitizer none -O "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target found an input that fails (kept in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "$log" || true
done
