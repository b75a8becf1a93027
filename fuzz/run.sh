#!/usr/bin/env bash
# fuzz/run.sh SECONDS_PER_TARGET [TARGET...]
#
# Builds every fuzz target (cargo-fuzz on the nightly toolchain, in
# fuzz/target) and runs each for SECONDS_PER_TARGET from its seeds
# (fuzz/seeds/<target>/) and its past regressions
# (tests/data/fuzz-regressions/<target>/), new inputs going to
# fuzz/corpus/<target>/ (not committed). Fails, naming the targets and
# their crash files (fuzz/artifacts/<target>/), if any input made a target
# panic, fail one of its checks, use more than -rss_limit_mb of memory or
# run longer than -timeout seconds. A crash file becomes a regression:
# copy it to tests/data/fuzz-regressions/<target>/ (tests/fuzz_regressions.rs
# runs it in the normal suite), then fix the parser.
#
# Needs `cargo install cargo-fuzz --locked --version 0.13.1` and the
# nightly toolchain. Measured on the 2-core CI-sized machine (shared with
# other builds): see .ci/run (step "fuzz"), then 8 targets × SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: fuzz/run.sh SECONDS_PER_TARGET [TARGET...]}
shift
all=(y4m frame_convert image config config_mqtt manifest detector_post spool)
targets=("${@:-${all[@]}}")

# Longest input per target: room for what each format needs (a header and
# a few tiny frames; a small JPEG or PNG; a whole config file), short
# enough that libFuzzer does not spend its time on megabyte inputs.
max_len() {
  case $1 in
    y4m | config_mqtt) echo 4096 ;;
    frame_convert | image) echo 32768 ;;
    config | manifest | spool | detector_post) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

# FUZZ_SANITIZER: cargo-fuzz's -s (default address; CI uses none: the
# parsers are safe Rust, panics, memory and time limits are caught either
# way, and the build without ASan costs about half: 661 CPU-s cold).
# FUZZ_TARGET_DIR: where the build goes (default fuzz/target).
tdir=${FUZZ_TARGET_DIR:-fuzz/target}
cargo +nightly fuzz build -s "${FUZZ_SANITIZER:-address}" --fuzz-dir fuzz --target-dir "$tdir"
# The binaries just built, run directly: `cargo fuzz run` would check the
# build again before every target.
bin=$tdir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "=== fuzz $t: ${secs} s"
  # -rss_limit_mb: the largest legitimate allocations are a 8192² y4m
  # frame (~100 MB) and the image decoder's 512 MiB cap; 2 GiB is far
  # above both and below a Pi's memory. -timeout: seconds for one input.
  if ! "$bin/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" "tests/data/fuzz-regressions/$t" \
    -max_total_time="$secs" -max_len="$(max_len "$t")" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/"; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}:" >&2
  for t in "${failed[@]}"; do ls -l "fuzz/artifacts/$t" >&2; done
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash"
