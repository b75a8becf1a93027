#!/usr/bin/env bash
# Refreshes the committed RustSec advisory database snapshot that
# `cargo deny check` reads (supply-chain/advisory-db/). Needs a machine that
# reaches github.com (CI does not; it reads the committed snapshot).
#
#   supply-chain/update-advisory-db.sh              # clone upstream main
#   supply-chain/update-advisory-db.sh GIT_DIR      # an existing clone (bare or not)
#
# Copies only what cargo-deny reads, the advisories under crates/, plus the
# database's licence files, and records the upstream commit and its date in
# supply-chain/advisory-db/SNAPSHOT (read by supply-chain/cargo-deny-check for
# the staleness check) and README.md. Afterwards: run supply-chain/cargo-deny-check, fix or
# ignore (with a reason, in deny.toml) what it finds, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=supply-chain/advisory-db
upstream=https://github.com/rustsec/advisory-db

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
  src=$1
else
  git clone --quiet --bare --depth 1 "$upstream" "$work/clone.git"
  src=$work/clone.git
fi
commit=$(git --git-dir="$src" rev-parse HEAD 2>/dev/null || git -C "$src" rev-parse HEAD)
gitc() { git --git-dir="$src" "$@" 2>/dev/null || git -C "$src" "$@"; }
date=$(gitc show -s --format=%cI "$commit")

mkdir -p "$work/new"
gitc archive --format=tar "$commit" crates LICENSE.txt LICENSES | tar -x -C "$work/new"
n=$(find "$work/new/crates" -name '*.md' | wc -l)
if [ "$n" -lt 500 ]; then
  echo "update-advisory-db: only $n advisories under crates/ at $commit; refusing" >&2
  exit 1
fi
printf 'upstream = %s\ncommit = %s\ndate = %s\n' "$upstream" "$commit" "$date" >"$work/new/SNAPSHOT"
cat >"$work/new/README.md" <<README
# RustSec advisory database, snapshot

What \`cargo deny check advisories\` reads in CI, which cannot reach GitHub:
the advisories (\`crates/\`, $n of them) and licence files of
$upstream
at commit \`$commit\`, committed $date.
Nothing else of that repository is here.

- \`SNAPSHOT\`: the same, read by \`supply-chain/cargo-deny-check\` (which lays
  the copy out where cargo-deny looks and dates it by the commit time:
  CI fails once the snapshot is older than deny.toml's
  \`maximum-db-staleness\`).
- Refresh (needs github.com): \`supply-chain/update-advisory-db.sh\`, then
  \`supply-chain/cargo-deny-check\`, and fix or ignore (deny.toml, with a
  reason) what is new.
- Licence: CC0-1.0, a few advisories CC-BY-4.0 (their \`license\` field);
  \`LICENSE.txt\`, \`LICENSES/\`.
README
rm -rf "$dest"
mv "$work/new" "$dest"
echo "update-advisory-db: $n advisories, $upstream at $commit ($date), $(find "$dest" -type f -printf "%s\n" | awk "{s += \$1} END {print s}") bytes"
