#!/usr/bin/env bash
# Prepares the rig's guest on the host, from Debian packages only, and
# caches it. RIG_ARCH picks the guest:
#
# - x86_64 (default): the current Debian 6.1 amd64 kernel (looked up with
#   apt, never hard-coded) as an uncompressed vmlinux, gpio-sim built out of
#   tree from linux-source-6.1, and a base initramfs (busybox, v4l2-ctl, the
#   module closure of vivid, vfb, gpio-sim and 9p).
# - aarch64 (a Raspberry Pi 4's Cortex-A72 under qemu-system-aarch64 -M
#   virt): the current linux-image-arm64 and busybox-static:arm64, fetched
#   through a private apt state for arm64 (the host's apt configuration is
#   not touched), and a base initramfs with the module closure of vivid,
#   virtio-gpu and 9p, and the aarch64 dynamic loader for ferd. GPIO there is
#   the board's own PL061 controller (built into Debian's arm64 kernel);
#   Debian's arm64 kernel has neither gpio-sim nor vfb.
#
# Prints the cache directory of the prepared kernel on its last line.
# Everything lands under $RIG_CACHE (default: target/rig); a second run
# with the same kernel version reuses it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${RIG_CACHE:-${CARGO_TARGET_DIR:-$repo/target}/rig}"
arch="${RIG_ARCH:-x86_64}"
mkdir -p "$cache"
log() { echo "rig-prepare: $*" >&2; }
case "$arch" in
  x86_64) deb_arch=amd64 ;;
  aarch64) deb_arch=arm64 ;;
  *) log "RIG_ARCH=$arch: expected x86_64 or aarch64"; exit 2 ;;
esac

# Host tools. apt-get runs only when something is missing (CI installs
# them in .ci/run; a developer may have them already).
if [ "$arch" = x86_64 ]; then
  host_pkgs=(qemu-system-x86 busybox-static v4l-utils kmod cpio xz-utils make gcc)
else
  host_pkgs=(qemu-system-arm kmod cpio gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
fi
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

# For a foreign guest, apt works on a private state (package lists for
# that architecture only) under the cache, with the host's sources.
apt_opts=()
if [ "$deb_arch" != "$(dpkg --print-architecture)" ]; then
  st="$cache/apt-$deb_arch"
  mkdir -p "$st/lists/partial" "$st/archives/partial"
  touch "$st/status"
  apt_opts=(-o "Dir::State=$st" -o "Dir::State::Lists=$st/lists" -o "Dir::State::status=$st/status"
    -o "Dir::Cache=$st" -o "Dir::Cache::archives=$st/archives"
    -o "APT::Architecture=$deb_arch" -o "APT::Architectures::=$deb_arch")
fi
need_update=1
apt_update() {
  if [ "$need_update" = 1 ]; then
    apt-get "${apt_opts[@]}" update -qq >&2
    need_update=0
  fi
}
# The kernel ABI that linux-image-$deb_arch points at right now.
kernel_abi() {
  apt-cache "${apt_opts[@]}" depends "linux-image-$deb_arch" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}'
}
kabi=""
if [ -n "${RIG_KERNEL:-}" ]; then
  kabi="$RIG_KERNEL"
else
  # Look up without an update first (fast, works offline when cached);
  # refresh the lists when apt knows nothing yet.
  kabi="$(kernel_abi)" || true
  if [ -z "$kabi" ] || [ ! -f "$cache/$kabi-$(sha256sum "$0" | cut -c1-12)/ready" ]; then
    apt_update
    kabi="$(kernel_abi)"
  fi
fi
[ -n "$kabi" ] || { log "cannot find the kernel version of linux-image-$deb_arch"; exit 1; }
# The cache key: kernel version and this script's own text.
out="$cache/$kabi-$(sha256sum "$0" | cut -c1-12)"
if [ -f "$out/ready" ] && [ ${#missing[@]} -eq 0 ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi
log "kernel $kabi"

if [ "$arch" = x86_64 ]; then
  missing+=("linux-headers-$kabi" "linux-source-6.1")
fi
todo=()
for p in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || todo+=("$p")
done
if [ ${#todo[@]} -gt 0 ]; then
  log "installing ${todo[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${todo[@]}" >&2
fi

work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

# Downloads the given packages (of the guest's architecture) into $work.
fetch() {
  (apt-get "${apt_opts[@]}" download "$@" >&2 2>/dev/null) ||
    (apt_update && apt-get "${apt_opts[@]}" download "$@" >&2)
}

# 1. The kernel image and its modules.
log "downloading linux-image-$kabi"
fetch "linux-image-$kabi"
dpkg-deb -x linux-image-"$kabi"_*.deb kroot
rm -f linux-image-"$kabi"_*.deb
moddir="kroot/lib/modules/$kabi"
if [ "$arch" = x86_64 ]; then
  # The package's own vmlinuz, unpacked to vmlinux (it carries a PVH note,
  # and booting it uncompressed halves the boot time).
  python3 - kroot/boot/vmlinuz-"$kabi" kernel <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("vmlinuz: no xz payload")
d = lzma.LZMADecompressor()
open(sys.argv[2], "wb").write(d.decompress(data[at:]))
PY
else
  # arm64's vmlinuz is the plain Image (magic "ARM\x64" at 0x38), which
  # qemu boots directly.
  [ "$(od -A n -t x1 -j 56 -N 4 kroot/boot/vmlinuz-"$kabi" | tr -d ' ')" = 41524d64 ] ||
    { log "vmlinuz-$kabi: not an arm64 Image"; exit 1; }
  cp kroot/boot/vmlinuz-"$kabi" kernel
fi

# 2. x86_64: gpio-sim (and the irq_sim it needs) from linux-source-6.1.
#    irq_sim is built into no Debian kernel module, and irq_to_desc is not
#    exported, so one call changes to the exported equivalent.
if [ "$arch" = x86_64 ]; then
  log "building gpio-sim"
  src=/usr/src/linux-source-6.1.tar.xz
  mkdir -p gsim
  tar -xJf "$src" -C gsim --strip-components=3 linux-source-6.1/drivers/gpio/gpio-sim.c \
    linux-source-6.1/drivers/gpio/gpiolib.h linux-source-6.1/kernel/irq/irq_sim.c
  sed -i 's/handle_simple_irq(irq_to_desc(irqnum));/generic_handle_irq(irqnum);/' gsim/irq_sim.c
  grep -q 'generic_handle_irq(irqnum);' gsim/irq_sim.c || { log "irq_sim.c: patch did not apply"; exit 1; }
  printf '\n#include <linux/module.h>\nMODULE_LICENSE("GPL");\nMODULE_DESCRIPTION("irq_sim (out of tree, for gpio-sim)");\n' >>gsim/irq_sim.c
  echo 'obj-m += irq_sim.o gpio-sim.o' >gsim/Kbuild
  make -s -C "/usr/src/linux-headers-$kabi" M="$work/gsim" modules >&2 2>gsim/build.log ||
    { cat gsim/build.log >&2; exit 1; }
  mkdir -p "$moddir/extra"
  cp gsim/irq_sim.ko gsim/gpio-sim.ko "$moddir/extra/"
fi
depmod -b kroot "$kabi"

# 3. The base initramfs: busybox, the modules the guest loads with their
#    dependencies, and the dynamic loader and C library that ferd and the
#    host-built helpers need: on x86_64 they come with v4l2-ctl (no
#    scenario needs it; it stays for poking at vivid by hand in a guest),
#    on aarch64 the loader comes from the cross toolchain (ferd's libraries
#    travel in the share, and the helpers are static).
log "packing the initramfs"
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib,lib64,usr/bin,usr/lib}
if [ "$arch" = x86_64 ]; then
  cp /bin/busybox "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
  copy_with_libs() {
    local f lib
    for f in "$@"; do
      cp -L "$f" "$root/usr/bin/"
      for lib in $(ldd "$f" | awk '$2=="=>" && $3 ~ /^\//{print $3} $1 ~ /^\//{print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
      done
    done
  }
  copy_with_libs "$(command -v v4l2-ctl)"
  wanted=(vivid vfb gpio-sim configfs 9p 9pnet_virtio virtio_pci)
else
  fetch busybox-static
  dpkg-deb -x busybox-static_*.deb bb
  cp bb/bin/busybox "$root/bin/busybox"
  # The applet links are made by /init at boot (the host cannot run the
  # arm64 busybox to list them); /init itself needs sh.
  ln -s busybox "$root/bin/sh"
  cp -L /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 "$root/lib/"
  wanted=(vivid virtio-gpu configfs 9p 9pnet_virtio virtio_pci)
fi
# /init is not part of this cached archive: run-all.sh appends it.
for m in "${wanted[@]}"; do
  modprobe -d kroot -S "$kabi" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r ko; do
  rel="${ko#"$work"/kroot}"
  mkdir -p "$root$(dirname "$rel")"
  cp "$ko" "$root$rel"
done
cp "$moddir"/modules.order "$moddir"/modules.builtin "$moddir"/modules.builtin.modinfo "$root/lib/modules/$kabi/" 2>/dev/null || true
depmod -b "$root" "$kabi"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >initramfs.cpio.gz

mkdir -p "$out.new"
mv kernel initramfs.cpio.gz "$out.new/"
echo "$kabi" >"$out.new/kernel.version"
echo "$arch" >"$out.new/arch"
touch "$out.new/ready"
rm -rf "$out"
mv "$out.new" "$out"
cd /
rm -rf "$work"
log "ready: $out"
echo "$out"
