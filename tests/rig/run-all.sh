#!/usr/bin/env bash
# The virtual hardware rig: boots a Debian kernel in QEMU (TCG, one vCPU)
# with vivid (camera), gpio-sim (GPIO) and vfb (framebuffer), and runs the
# release `ferd` binary in it, one guest boot per scenario.
#
#   tests/rig/run-all.sh [SCENARIO...]
#   RIG_ARCH=aarch64 tests/rig/run-all.sh [SCENARIO...]
#
# RIG_ARCH=aarch64 boots Debian's arm64 kernel on an emulated Cortex-A72
# (a Raspberry Pi 4's CPU, `qemu-system-aarch64 -M virt`) and runs the
# aarch64 build of ferd there (RIG_FERD, default: built with cargo for
# aarch64-unknown-linux-gnu); its GPIO chip is the board's PL061. Only the
# scenarios whose `# rig-arch:` line names the architecture run by default
# (no such line: x86_64 only).
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
export RIG_ARCH="${RIG_ARCH:-x86_64}"
mkdir -p "$RIG_CACHE"
t0=$(date +%s)

# 1. The guest kernel, modules and base initramfs (cached).
kdir="$("$here/prepare.sh" | tail -n 1)"

# 2. The ferd binary under test: the release build for the guest, and the
#    C compiler for the rig's helpers (static for the foreign guest, which
#    carries no C library of its own beyond what ferd needs).
case "$RIG_ARCH" in
  x86_64)
    triple="" cc=(gcc)
    ;;
  aarch64)
    triple=aarch64-unknown-linux-gnu cc=(aarch64-linux-gnu-gcc -static)
    ;;
  *) echo "rig: RIG_ARCH=$RIG_ARCH: expected x86_64 or aarch64" >&2; exit 2 ;;
esac
if [ -z "${RIG_FERD:-}" ]; then
  (cd "$repo" && cargo build --release --quiet ${triple:+--target "$triple"})
  RIG_FERD="$target/${triple:+$triple/}release/ferd"
fi

# 3. The share the guest mounts at /rig: ferd and its libraries, the
#    models, the rig's scripts and data, and out/ for results.
share="$RIG_CACHE/share"
rm -rf "$share"
mkdir -p "$share/lib" "$share/tests" "$share/out" "$share/data"
cp "$RIG_FERD" "$share/ferd"
if [ -z "$triple" ]; then
  for lib in $(ldd "$RIG_FERD" | awk '$2=="=>" && $3 ~ /^\//{print $3}'); do
    cp -L "$lib" "$share/lib/"
  done
else
  # ldd cannot run a foreign binary: follow DT_NEEDED through the cross
  # toolchain's target libraries (the guest's initramfs has the loader).
  sysroot=/usr/aarch64-linux-gnu/lib
  todo=("$RIG_FERD")
  while [ ${#todo[@]} -gt 0 ]; do
    f="${todo[0]}"
    todo=("${todo[@]:1}")
    for name in $(aarch64-linux-gnu-readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case "$name" in ld-linux-*) continue ;; esac
      [ -e "$share/lib/$name" ] && continue
      [ -e "$sysroot/$name" ] || { echo "rig: $name (needed by $f) is not in $sysroot" >&2; exit 1; }
      cp -L "$sysroot/$name" "$share/lib/$name"
      todo+=("$share/lib/$name")
    done
  done
fi
cp -r "$repo/models" "$share/models"
cp -r "$here" "$share/tests/rig"
# Frames for the camera: the demo clip itself and single frames of it as
# one-frame clips, all played by vout (cached by the clip's hash).
clip="$repo/examples/demo.y4m"
frames="$RIG_CACHE/frames-$(sha256sum "$clip" "$here/host/y4m_frames.py" | sha256sum | cut -c1-12)"
if [ ! -d "$frames" ]; then
  python3 "$here/host/y4m_frames.py" "$clip" "$frames.tmp"
  mv "$frames.tmp" "$frames"
fi
cp "$frames"/* "$share/data/"
cp "$clip" "$share/data/demo.y4m"
# The guest's helpers, one program per host/*.c: vout plays the clip into
# vivid's output at its own pace, vivid_loop sets up vivid, notify_log
# listens on a notify socket.
mkdir -p "$share/bin"
for c in "$here"/host/*.c; do
  "${cc[@]}" -O2 -Wall -o "$share/bin/$(basename "$c" .c)" "$c"
done
prep_s=$(($(date +%s) - t0))
echo "rig: prepared in ${prep_s}s ($RIG_ARCH guest, kernel $(cat "$kdir/kernel.version"))"

# 4. The scenarios, each in a fresh guest.
if [ $# -gt 0 ]; then
  scenarios=("$@")
else
  scenarios=()
  for f in "$here"/scenarios/[0-9]*.sh; do
    archs="$(sed -n 's/^# rig-arch://p' "$f")"
    case " ${archs:- x86_64} " in
      *" $RIG_ARCH "*) scenarios+=("$(basename "$f" .sh)") ;;
    esac
  done
  [ ${#scenarios[@]} -gt 0 ] || { echo "rig: no scenario runs on $RIG_ARCH" >&2; exit 1; }
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
