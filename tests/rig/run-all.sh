#!/usr/bin/env bash
# The virtual hardware rig: boots a Debian kernel in QEMU (TCG, one vCPU)
# with vivid (camera), gpio-sim (GPIO) and vfb (framebuffer), and runs the
# release `ferd` binary in it, one guest boot per scenario.
#
#   tests/rig/run-all.sh [SCENARIO...]
#
# Builds what it needs (cached under $RIG_CACHE, default target/rig), runs
# every scenario (or those named), prints one line per scenario and last
# `rig: N passed, M failed`; exits 0 only if all passed. A failed
# scenario's guest log is printed after its line.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac
export RIG_CACHE="${RIG_CACHE:-$target/rig}"
mkdir -p "$RIG_CACHE"
t0=$(date +%s)

# 1. The guest kernel, modules and base initramfs (cached).
kdir="$("$here/prepare.sh" | tail -n 1)"

# 2. The ferd binary under test: the release build.
if [ -z "${RIG_FERD:-}" ]; then
  (cd "$repo" && cargo build --release --quiet)
  RIG_FERD="$target/release/ferd"
fi

# 3. The share the guest mounts at /rig: ferd and its libraries, the
#    models, the rig's scripts and data, and out/ for results.
share="$RIG_CACHE/share"
rm -rf "$share"
mkdir -p "$share/lib" "$share/tests" "$share/out" "$share/data"
cp "$RIG_FERD" "$share/ferd"
for lib in $(ldd "$RIG_FERD" | awk '$2=="=>" && $3 ~ /^\//{print $3}'); do
  cp -L "$lib" "$share/lib/"
done
cp -r "$repo/models" "$share/models"
cp -r "$here" "$share/tests/rig"
# Frames for the camera: the demo clip itself (played by vout) and single
# frames of it as 640×480 YUYV for v4l2-ctl to loop (cached by the clip's
# hash).
clip="$repo/examples/demo.y4m"
frames="$RIG_CACHE/frames-$(sha256sum "$clip" "$here/host/y4m_frames.py" | sha256sum | cut -c1-12)"
if [ ! -d "$frames" ]; then
  python3 "$here/host/y4m_frames.py" "$clip" "$frames.tmp" 640 480
  mv "$frames.tmp" "$frames"
fi
cp "$frames"/* "$share/data/"
cp "$clip" "$share/data/demo.y4m"
# vout plays the clip into vivid's output at its own pace.
mkdir -p "$share/bin"
gcc -O2 -Wall -o "$share/bin/vout" "$here/host/vout.c"
prep_s=$(($(date +%s) - t0))
echo "rig: prepared in ${prep_s}s (kernel $(cat "$kdir/kernel"))"

# 4. The scenarios, each in a fresh guest.
if [ $# -gt 0 ]; then
  scenarios=("$@")
else
  scenarios=()
  for f in "$here"/scenarios/[0-9]*.sh; do
    scenarios+=("$(basename "$f" .sh)")
  done
fi
passed=0
failed=0
for s in "${scenarios[@]}"; do
  start=$(date +%s)
  set +e
  "$here/vm.sh" "$kdir" "$share" "$s" "${RIG_TIMEOUT:-600}"
  rc=$?
  set -e
  took=$(($(date +%s) - start))
  # A scenario may leave host-side checks (e.g. framebuffer against PNG).
  if [ "$rc" = 0 ] && [ -x "$here/scenarios/$s.check" ]; then
    if ! "$here/scenarios/$s.check" "$share/out" >>"$share/out/$s.log" 2>&1; then
      rc=1
    fi
  fi
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "PASS $s (${took}s)"
  else
    failed=$((failed + 1))
    echo "FAIL $s (${took}s, status $rc)"
    sed 's/^/    /' "$share/out/$s.log" 2>/dev/null | tail -n 60 || true
    grep -v '^\s*$' "$share/out/$s.console" 2>/dev/null | tail -n 20 | sed 's/^/    console: /' || true
  fi
done
echo "rig: total $(($(date +%s) - t0))s"
echo "rig: $passed passed, $failed failed"
[ "$failed" = 0 ]
