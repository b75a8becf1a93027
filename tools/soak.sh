#!/usr/bin/env bash
# The long soak, with the models: `ferd run` on the demo clip looped
# endlessly through a FIFO at full speed, for MINUTES (default 30).
# Every 10 s it samples ferd's RSS and open descriptors; at the end it
# stops ferd with SIGTERM and checks:
#   - RSS after the first fifth of the run stays within 5% of its value
#     then; descriptors do not change;
#   - every alert raised was cleared, every face that appeared was lost;
#   - ferd exited 0 and analysed frames all along.
# Prints the figures (docs/RELIABILITY.md quotes them). The CI-sized form
# is tests/soak.rs.
#
# Usage: tools/soak.sh [--minutes N] [--config FILE] [--ferd BINARY] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
config=systemd/ferd.toml
ferd=target/release/ferd
out=target/soak
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --ferd) ferd=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--config FILE] [--ferd BINARY] [--out DIR]" >&2; exit 2 ;;
  esac
done
[ -x "$ferd" ] || { echo "$ferd: not built (cargo build --release)" >&2; exit 2; }
rm -rf "$out"; mkdir -p "$out"
fifo=$out/camera.y4m
mkfifo "$fifo"

# The feeder: the header once, then the clip's frames forever.
python3 - "$fifo" examples/demo.y4m <<'EOF' &
import sys
fifo, clip = sys.argv[1], sys.argv[2]
data = open(clip, "rb").read()
eol = data.index(b"\n") + 1
header, frames = data[:eol], data[eol:]
try:
    with open(fifo, "wb", buffering=1 << 20) as f:
        f.write(header)
        while True:
            f.write(frames)
except BrokenPipeError:
    pass
EOF
feeder=$!

"$ferd" run --config "$config" --source "$fifo" >"$out/events.jsonl" 2>"$out/ferd.log" &
pid=$!
echo "seconds rss_kb fds" >"$out/samples.txt"
end=$((SECONDS + minutes * 60))
while [ $SECONDS -lt $end ] && kill -0 $pid 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
  fds=$(ls /proc/$pid/fd | wc -l)
  echo "$SECONDS $rss $fds" >>"$out/samples.txt"
  sleep 10
done
hwm=$(awk '/^VmHWM/ {print $2}' /proc/$pid/status)
kill -TERM $pid
status=0
wait $pid || status=$?
kill $feeder 2>/dev/null || true
wait $feeder 2>/dev/null || true

python3 - "$out" "$status" "$hwm" "$minutes" <<'EOF'
import json, sys
out, status, hwm, minutes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
samples = [tuple(map(int, l.split())) for l in open(f"{out}/samples.txt").read().splitlines()[1:]]
events = [json.loads(l) for l in open(f"{out}/events.jsonl")]
count = lambda t: sum(1 for e in events if e["type"] == t)
frames = next(e["frames"] for e in reversed(events) if e["type"] == "status")
warm = [s for s in samples if s[0] >= minutes * 60 / 5]
base = warm[0]
fails = []
if status != 0:
    fails.append(f"ferd exited {status}")
if max(s[1] for s in warm) > base[1] * 1.05:
    fails.append("RSS grew by more than 5% after warm-up")
if any(s[2] != base[2] for s in warm):
    fails.append("descriptors changed after warm-up")
if count("alert_raised") != count("alert_cleared"):
    fails.append("an alert stayed raised")
if count("face_appeared") != count("face_lost"):
    fails.append("a track was never lost")
print(f"soak: {minutes:g} min, {frames} frames ({frames / (minutes * 60):.1f} fps), {len(events)} events, "
      f"{count('alert_raised')} alerts raised and cleared")
print(f"RSS {base[1] / 1024:.1f} MB at {base[0]} s, {min(s[1] for s in warm) / 1024:.1f}-{max(s[1] for s in warm) / 1024:.1f} MB after; "
      f"peak (VmHWM) {hwm / 1024:.1f} MB; descriptors {base[2]}")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
EOF
