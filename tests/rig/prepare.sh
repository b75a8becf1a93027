#!/usr/bin/env bash
# Prepares the rig's guest on the host, from Debian packages only, and
# caches it: the current Debian 6.1 kernel (looked up with apt, never
# hard-coded) as an uncompressed vmlinux, gpio-sim built out of tree from
# linux-source-6.1, and a base initramfs (busybox, v4l2-ctl, the module
# closure of vivid, vfb, gpio-sim and 9p).
#
# Prints the cache directory of the prepared kernel on its last line.
# Everything lands under $RIG_CACHE (default: target/rig); a second run
# with the same kernel version reuses it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${RIG_CACHE:-${CARGO_TARGET_DIR:-$repo/target}/rig}"
mkdir -p "$cache"
log() { echo "rig-prepare: $*" >&2; }

# Host tools. apt-get runs only when something is missing (CI installs
# them in .ci/run; a developer may have them already).
host_pkgs=(qemu-system-x86 busybox-static v4l-utils kmod cpio xz-utils make gcc)
missing=()
for p in "${host_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

# The kernel ABI that linux-image-amd64 points at right now.
need_update=1
apt_update() {
  if [ "$need_update" = 1 ]; then
    apt-get update -qq >&2
    need_update=0
  fi
}
kabi=""
if [ -n "${RIG_KERNEL:-}" ]; then
  kabi="$RIG_KERNEL"
else
  # Look up without an update first (fast, works offline when cached);
  # refresh the lists when apt knows nothing yet.
  kabi="$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')" || true
  if [ -z "$kabi" ] || [ ! -f "$cache/$kabi-$(sha256sum "$0" | cut -c1-12)/ready" ]; then
    apt_update
    kabi="$(apt-cache depends linux-image-amd64 |
      awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')"
  fi
fi
[ -n "$kabi" ] || { log "cannot find the kernel version of linux-image-amd64"; exit 1; }
# The cache key: kernel version and this script's own text.
out="$cache/$kabi-$(sha256sum "$0" | cut -c1-12)"
if [ -f "$out/ready" ] && [ ${#missing[@]} -eq 0 ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi
log "kernel $kabi"

missing+=("linux-headers-$kabi" "linux-source-6.1")
todo=()
for p in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || todo+=("$p")
done
if [ ${#todo[@]} -gt 0 ]; then
  log "installing ${todo[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${todo[@]}" >&2
fi

work="$out.tmp"
rm -rf "$work"
mkdir -p "$work"
cd "$work"

# 1. The kernel image: the package's own vmlinuz, unpacked to vmlinux (it
#    carries a PVH note, and booting it uncompressed halves the boot time).
log "downloading linux-image-$kabi"
(cd "$work" && apt-get download "linux-image-$kabi" >&2 2>/dev/null) ||
  (apt_update && cd "$work" && apt-get download "linux-image-$kabi" >&2)
dpkg-deb -x linux-image-"$kabi"_*.deb kroot
rm -f linux-image-"$kabi"_*.deb
python3 - kroot/boot/vmlinuz-"$kabi" vmlinux <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("vmlinuz: no xz payload")
d = lzma.LZMADecompressor()
open(sys.argv[2], "wb").write(d.decompress(data[at:]))
EOF
moddir="kroot/lib/modules/$kabi"

# 2. gpio-sim (and the irq_sim it needs) from linux-source-6.1. irq_sim is
#    built into no Debian kernel module, and irq_to_desc is not exported,
#    so one call changes to the exported equivalent.
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
depmod -b kroot "$kabi"

# 3. The base initramfs: busybox, v4l2-ctl with its libraries, and the
#    modules the guest loads, with their dependencies.
log "packing the initramfs"
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt,lib64,usr/bin,usr/lib}
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
mv vmlinux initramfs.cpio.gz "$out.new/"
echo "$kabi" >"$out.new/kernel"
touch "$out.new/ready"
rm -rf "$out"
mv "$out.new" "$out"
cd /
rm -rf "$work"
log "ready: $out"
echo "$out"
