#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), one after the other, one process each,
# and reports executions per second. Logs go to fuzz/target/logs/<target>.log; new
# corpus entries to fuzz/corpus/<target>/ (minimise with `cargo fuzz cmin <target>`
# before committing); crashes to fuzz/artifacts/<target>/ (copy them to
# fuzz/regressions/<target>/ once fixed).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz 0.11.4 or later (installed here if missing; earlier ones cannot build a
# fuzz crate that is a member of the root workspace, as porter-fuzz is) and only a stable
# toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly flags (sanitizer, coverage).
# The builds go to the workspace's target/ directory.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-600}"
shift || true
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

mkdir -p target/logs
cargo fuzz build "${targets[@]:0:1}" >/dev/null 2>&1 || true # warm the build once
summary=()
status=0
for t in "${targets[@]}"; do
    log="target/logs/$t.log"
    echo "== $t: ${seconds}s (log: fuzz/$log)"
    # -timeout: any single input slower than 10 s is a finding.
    # -rss_limit_mb: the core's bounds must keep memory far below this.
    if cargo fuzz run "$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    line="$t: ${execs:-?} execs in ${seconds}s, ${rate:-?} execs/s, peak RSS ${rss:-?} MB, corpus $corpus files: $result"
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
