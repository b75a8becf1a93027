#!/usr/bin/env bash
# Clean-room proof of README's "Two commands": a fresh Debian root with
# nothing but a Rust toolchain, a fresh clone of the repository, and the two
# commands exactly as README.md states them, run inside it.
#
# Usage (as root: debootstrap, chroot and mount need it):
#   tools/cleanroom/run.sh [--fetch-only] [REPO]
#     REPO          what to `git clone` (default: this repository's root).
#                   Only committed history is cloned: commit first.
#     --fetch-only  stop after `cargo --version` and `cargo fetch` in the
#                   clean room (a minute; the full run's first build
#                   compiles tract, 30+ minutes on 2 cores).
#   CLEANROOM_DIR     cache and work area (default /var/tmp/ferd-cleanroom);
#                     logs in $CLEANROOM_DIR/logs/.
#   CLEANROOM_SHARED  optional: a ../shared folder (datasets) to bind
#                     read-only beside the clone. Without it the FER2013
#                     test finds no dataset and SKIPs, as on a fresh machine.
# Prints PASS/FAIL per command and check; exits 0 only if all pass.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fetch_only=false
if [ "${1:-}" = --fetch-only ]; then
  fetch_only=true
  shift
fi
repo=${1:-$(cd "$here/../.." && pwd)}
cache=${CLEANROOM_DIR:-/var/tmp/ferd-cleanroom}
base=$cache/base        # debootstrap's output, reused between runs
root=$cache/root        # this run's room: a fresh copy of base
logs=$cache/logs
work=/work/ferd         # the clone's path inside the room
suite=bookworm
mirror=${CLEANROOM_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (debootstrap, chroot, mount)" >&2; exit 2; }
mkdir -p "$cache" "$logs"
failures=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# The README's commands, read from its "Two commands" section (the first
# ```sh block after the heading; comments and blank lines dropped), so this
# proof tests what the README says and not a copy that could drift.
mapfile -t commands < <(awk '
  /^## / { insec = ($0 == "## Two commands"); next }
  insec && /^```sh/ { inblock = 1; next }
  inblock && /^```/ { exit }
  inblock && !/^[[:space:]]*(#|$)/ { print }
' "$repo/README.md")
if [ ${#commands[@]} -ne 2 ]; then
  echo "run.sh: expected two commands in README.md's \"Two commands\" section, found ${#commands[@]}" >&2
  exit 2
fi

# (a) The minimal Debian root: minbase (essential packages and apt) plus
# ca-certificates (cargo reaches crates.io over TLS) and gcc/libc6-dev:
# every Rust toolchain on Linux links through the system C compiler and
# libc, so a machine "with a Rust toolchain" has them. Nothing else: git,
# systemd, python and the datasets are absent on purpose.
if [ ! -e "$base/.complete" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  }
  rm -rf "$base.tmp"
  t0=$SECONDS
  echo "debootstrap $suite minbase into $base (log: $logs/debootstrap.log)"
  if ! debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev \
      "$suite" "$base.tmp" "$mirror" >"$logs/debootstrap.log" 2>&1; then
    tail -20 "$logs/debootstrap.log" >&2
    echo "run.sh: debootstrap failed" >&2
    exit 1
  fi
  # Downloaded .debs are not part of a machine.
  rm -rf "$base.tmp"/var/cache/apt/archives/*.deb
  echo "debootstrap: $((SECONDS - t0)) s, $(du -sh "$base.tmp" | cut -f1)" | tee "$logs/debootstrap.summary"
  touch "$base.tmp/.complete"
  mv "$base.tmp" "$base"
fi

# Mounts are undone on any exit so the cache can be deleted with rm -rf.
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT

# A fresh room per run: nothing a previous run built or downloaded
# (target/, ~/.cargo/registry) survives into this one.
if [ -d "$root" ]; then
  # A run killed before its trap leaves mounts behind; never rm through them.
  for m in proc dev work/shared; do
    if mountpoint -q "$root/$m"; then umount -l "$root/$m"; fi
  done
  rm -rf "$root"
fi
cp -a "$base" "$root"

# (b) The host's Rust toolchain: rustup's default toolchain, its settings
# and the proxies in ~/.cargo/bin, nothing else from ~/.cargo (no registry
# cache, no config). Its bundled docs (share/doc, ~800 MB) are left out:
# building and testing never read them.
toolchain=$(rustup default | awk '{print $1}')
echo "toolchain: $toolchain"
mkdir -p "$root/root/.rustup/toolchains" "$root/root/.cargo"
cp -a "$HOME/.rustup/settings.toml" "$root/root/.rustup/"
tar -C "$HOME/.rustup/toolchains" --exclude="$toolchain/share/doc" -cf - "$toolchain" \
  | tar -C "$root/root/.rustup/toolchains" -xf -
cp -a "$HOME/.cargo/bin" "$root/root/.cargo/"

# (c) A clone of the repository's committed state.
mkdir -p "$root$(dirname "$work")"
git clone --quiet --no-hardlinks "$repo" "$root$work"
echo "clone: $(git -C "$root$work" log -1 --format='%h %s' | cut -c1-72)"

# What a running machine provides: /proc (cargo and the tests read it),
# /dev (null, urandom, full), name resolution for crates.io.
# (Recorded one by one: `mount && record` would hide a failed mount from set -e.)
mount -t proc proc "$root/proc"
mounted+=("$root/proc")
mount --bind /dev "$root/dev"
mounted+=("$root/dev")
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# This machine reaches the internet through a TLS-inspecting egress proxy
# whose CA only the host trusts; the room gets that CA too, or no TLS
# connection (crates.io) works. A real fresh machine does not need this.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >"$logs/update-ca-certificates.log" 2>&1
fi
if [ -n "${CLEANROOM_SHARED:-}" ]; then
  mkdir -p "$root/work/shared"
  mount --bind "$CLEANROOM_SHARED" "$root/work/shared"
  mounted+=("$root/work/shared")
  mount -o remount,ro,bind "$root/work/shared"
fi

# (d) Inside the room: a login-like environment with only the toolchain on
# PATH; CI is unset, so tests whose prerequisites are absent SKIP.
in_room() { # in_room COMMAND: runs COMMAND with bash in the clone
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd $work && $1"
}

if in_room "cargo --version && rustc --version" >"$logs/version.log" 2>&1; then
  pass "cargo --version: $(head -1 "$logs/version.log")"
else
  fail "cargo --version (log: $logs/version.log)"
fi
t0=$SECONDS
if in_room "cargo fetch" >"$logs/fetch.log" 2>&1; then
  pass "cargo fetch ($((SECONDS - t0)) s)"
else
  fail "cargo fetch (log: $logs/fetch.log)"
fi
if $fetch_only; then
  echo "--fetch-only: stopping before the README's commands"
  exit $((failures > 0))
fi

# Command 1: the demo. Events on stdout, the screen in demo.png.
t0=$SECONDS
echo "command 1: ${commands[0]}"
if in_room "${commands[0]}" >"$logs/command1.stdout" 2>"$logs/command1.stderr"; then
  pass "command 1 ($((SECONDS - t0)) s; logs: $logs/command1.*)"
else
  fail "command 1 exit status (logs: $logs/command1.*)"
fi
events=$(grep -cE '^\{"v":1,"type":"[a-z_]+"' "$logs/command1.stdout" || true)
others=$(grep -cvE '^\{"v":1,"type":"[a-z_]+"' "$logs/command1.stdout" || true)
if [ "$events" -gt 0 ] && [ "$others" -eq 0 ]; then
  pass "command 1 stdout: $events JSON events, nothing else"
else
  fail "command 1 stdout: $events JSON event lines, $others other lines"
fi
for t in face_appeared alert_raised alert_cleared face_lost; do
  if grep -q "\"type\":\"$t\"" "$logs/command1.stdout"; then
    pass "command 1 stdout has $t"
  else
    fail "command 1 stdout has no $t"
  fi
done
if [ "$(head -c 8 "$root$work/demo.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
  pass "demo.png exists and is a PNG"
else
  fail "demo.png missing or not a PNG"
fi

# Command 2: the tests. Anything skipped for a missing prerequisite is
# listed so the proof says what it did not cover.
t0=$SECONDS
echo "command 2: ${commands[1]}"
if in_room "${commands[1]}" >"$logs/command2.stdout" 2>"$logs/command2.stderr"; then
  pass "command 2 ($((SECONDS - t0)) s; logs: $logs/command2.*)"
else
  fail "command 2 exit status (logs: $logs/command2.*)"
fi
grep -h '^test result:' "$logs/command2.stdout" | sed 's/^/  /' || true
grep -h '^SKIPPED' "$logs/command2.stderr" | sed 's/^/  /' || true

echo "$([ $failures -eq 0 ] && echo PASS || echo FAIL): clean room, $failures failure(s)"
exit $((failures > 0))
