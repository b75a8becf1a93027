#!/usr/bin/env bash
# Builds the initramfs addition for scenarios that run under systemd as
# PID 1 (a `# rig-init: systemd` line; vm.sh calls this):
#
#   systemd-root.sh WORK_DIR OUT.cpio.gz
#
# It holds the host's systemd (x86_64 Debian; the manager and systemctl
# with their libraries, as ldd lists them), the rig's units (./systemd/:
# rig.target runs the scenario; empty stand-ins for the targets a stock
# unit's default dependencies name), ferd.service made from
# systemd/ferd.service with only the binary's path changed to /rig/ferd
# (and a drop-in for its libraries and log, ./systemd/ferd-rig.conf), and
# the user and groups the unit names. The guest's kernel, busybox and C
# library come from the base archive.
set -euo pipefail
work="$1" out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
manager=/usr/lib/systemd/systemd
[ -x "$manager" ] && command -v systemctl >/dev/null ||
  { echo "systemd-root.sh: needs systemd on the host ($manager, systemctl: Debian package systemd)" >&2; exit 2; }

rm -rf "$work"
mkdir -p "$work"/{usr/lib/systemd,usr/bin,etc/systemd/system/ferd.service.d,etc/ferd,var/lib,root}
cp -L "$manager" "$work/usr/lib/systemd/systemd"
cp -L "$(command -v systemctl)" "$work/usr/bin/systemctl"
for f in "$manager" "$(command -v systemctl)"; do
  for lib in $(ldd "$f" | awk '$2=="=>" && $3 ~ /^\//{print $3} $1 ~ /^\//{print $1}'); do
    mkdir -p "$work$(dirname "$lib")"
    [ -e "$work$lib" ] || cp -L "$lib" "$work$lib"
  done
done

units="$work/etc/systemd/system"
cp "$here"/systemd/*.target "$here"/systemd/*.service "$here"/systemd/*.slice "$units/"
grep -q '^ExecStart=/usr/bin/ferd ' "$repo/systemd/ferd.service" ||
  { echo "systemd-root.sh: systemd/ferd.service has no ExecStart=/usr/bin/ferd" >&2; exit 1; }
sed 's|/usr/bin/ferd|/rig/ferd|g' "$repo/systemd/ferd.service" >"$units/ferd.service"
cp "$here/systemd/ferd-rig.conf" "$units/ferd.service.d/rig.conf"

# The unit's User=, Group= and SupplementaryGroups=.
cat >"$work/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
ferd:x:999:999:ferd:/var/lib/ferd:/bin/false
EOF
cat >"$work/etc/group" <<'EOF'
root:x:0:
video:x:44:ferd
gpio:x:997:ferd
i2c:x:996:ferd
ferd:x:999:
EOF
printf 'ID=debian\nPRETTY_NAME="ferd rig guest"\n' >"$work/etc/os-release"
(cd "$work" && find . -mindepth 1 | cpio -o -H newc --quiet | gzip -1) >"$out"
