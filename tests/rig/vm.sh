#!/usr/bin/env bash
# Boots the rig guest once and runs one scenario in it:
#   vm.sh KERNEL_DIR SHARE_DIR SCENARIO [TIMEOUT_S]
# KERNEL_DIR is what prepare.sh made; SHARE_DIR is mounted in the guest at
# /rig (9p) and receives out/SCENARIO.{log,rc}. Exits with the scenario's
# status (124 when the guest ran out of time).
set -euo pipefail
kdir="$1" share="$2" scenario="$3" limit="${4:-600}"
here="$(cd "$(dirname "$0")" && pwd)"

# The guest's /init travels in a second, tiny cpio appended to the cached
# base archive (the kernel unpacks both).
overlay="$(mktemp -d)"
trap 'rm -rf "$overlay"' EXIT
install -m 0755 "$here/guest/init" "$overlay/init"
(cd "$overlay" && echo init | cpio -o -H newc --quiet | gzip -1) >"$overlay/init.cpio.gz"
cat "$kdir/initramfs.cpio.gz" "$overlay/init.cpio.gz" >"$overlay/initrd"
append_extra=""
if grep -q '^# rig-init: systemd' "$here/scenarios/$scenario.sh" 2>/dev/null; then
  # systemd as PID 1: the host's own systemd (x86_64 guests only), built
  # into a third archive on every run (a second or two).
  [ "$(cat "$kdir/arch")" = x86_64 ] || { echo "vm.sh: $scenario: systemd runs on x86_64 guests only" >&2; exit 2; }
  "$here/systemd-root.sh" "$overlay/sd" "$overlay/systemd.cpio.gz"
  cat "$overlay/systemd.cpio.gz" >>"$overlay/initrd"
  # systemd logs to the kernel log (there is no journal): unthrottled, so
  # that the scenario can read the manager's lines back with dmesg.
  append_extra="printk.devkmsg=on systemd.show_status=0"
fi

mkdir -p "$share/out"
rm -f "$share/out/$scenario.rc" "$share/out/$scenario.log"
set +e
append="quiet mitigations=off nokaslr cryptomgr.notests panic=-1 rig.scenario=$scenario${append_extra:+ $append_extra}"
case "$(cat "$kdir/arch")" in
  x86_64)
    # Without FMA: QEMU 7.2's TCG runs a VFMADD231PS in about 1.5 us, 35
    # times a VMULPS and a VADDPS (measured with qemu-x86_64 -cpu max), and
    # tract's AVX2 kernels are made of them: a frame of the rig's config
    # took 12 s, 2.7 s without (tract's generic kernels; ferd's own AVX2
    # paths stay). Such x86_64 CPUs exist (Sandy and Ivy Bridge, older
    # Atoms), so the guest is still a machine ferd runs on.
    qemu=(qemu-system-x86_64 -accel tcg -cpu "${RIG_CPU:-max,-fma}")
    append="console=ttyS0 $append"
    ;;
  aarch64)
    # A Raspberry Pi 4's CPU on QEMU's generic board, whose PL061 GPIO
    # controller serves as the GPIO chip; virtio-gpu gives a framebuffer.
    qemu=(qemu-system-aarch64 -M virt -accel tcg -cpu "${RIG_CPU:-cortex-a72}" -device virtio-gpu-pci)
    append="console=ttyAMA0 $append"
    ;;
  *)
    echo "vm.sh: $kdir/arch: unknown guest architecture" >&2
    exit 2
    ;;
esac
timeout "$limit" "${qemu[@]}" -m 1024 -smp "${RIG_SMP:-1}" \
  -nodefaults -display none -no-reboot \
  -kernel "$kdir/kernel" -initrd "$overlay/initrd" \
  -append "$append" \
  -serial "file:$share/out/$scenario.console" \
  -virtfs "local,path=$share,mount_tag=rig,security_model=none,id=rig" \
  </dev/null >"$share/out/$scenario.qemu" 2>&1
status=$?
set -e
if [ "$status" = 124 ]; then
  echo "timeout" >"$share/out/$scenario.rc"
  exit 124
fi
rc="$(cat "$share/out/$scenario.rc" 2>/dev/null || echo 98)"
exit "$rc"
