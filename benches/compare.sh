#!/usr/bin/env bash
# ferd against the Python peer (benches/peer/peer.py) on the benchmark clip,
# run alternately for R rounds in one go, in two pairings:
#
#   (a) same work, one thread: ferd bench --config benches/same-work.toml
#       vs peer --threads 1 (same models, detector input 320x240, detector
#       and classifier on every frame). Target: ferd <= 1.0x the peer.
#   (b) as shipped: ferd bench --config systemd/ferd.toml (the packaged
#       pipeline, every core) vs peer --threads default (onnxruntime's
#       defaults). Target: ferd <= 0.5x the peer, and no face missed that
#       the same-work peer finds.
#
# Builds nothing: give it a release binary. Makes the clip
# (benches/make_clip.py) and the peer's venv (target/bench/venv-peer, from
# benches/peer/requirements.txt) when they are missing.
#
# Usage (from anywhere; paths are relative to the repository root):
#   benches/compare.sh [--ferd target/release/ferd] [--clip target/bench/clip.y4m]
#                      [--rounds 3] [--frames N] [--out DIR] [--match-iou 0.3]
#
# Prints, per pairing, the median over rounds of each run's median frame
# time, the ratio ferd/peer and the target; then the faces check. Every
# run's JSON and the faces files are kept in DIR (default
# target/bench/compare-<time>). Exit status: 0 when it ran (whatever the
# ratios), 1 on a usage or setup error. Without a working `ferd bench` the
# ferd half is skipped with a note and the peer half still runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

FERD=target/release/ferd
CLIP=target/bench/clip.y4m
ROUNDS=3
FRAMES=""
OUT=""
MATCH_IOU=0.3
VENV=target/bench/venv-peer

die() { echo "compare.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --ferd) FERD="${2:?--ferd needs a path}"; shift 2 ;;
        --clip) CLIP="${2:?--clip needs a path}"; shift 2 ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift 2 ;;
        --frames) FRAMES="${2:?--frames needs a number}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --match-iou) MATCH_IOU="${2:?--match-iou needs a number}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ -z "$FRAMES" || "$FRAMES" =~ ^[1-9][0-9]*$ ]] || die "--frames must be a positive integer"
OUT="${OUT:-target/bench/compare-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

# The peer's Python: a venv with the pinned packages (and pillow for the clip).
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import cv2, onnxruntime, numpy, PIL' 2>/dev/null; then
    echo "compare.sh: creating $VENV from benches/peer/requirements.txt" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r benches/peer/requirements.txt
fi
PY="$VENV/bin/python"

if [ ! -f "$CLIP" ]; then
    echo "compare.sh: making $CLIP with benches/make_clip.py" >&2
    "$PY" benches/make_clip.py "$CLIP"
fi

HAVE_FERD=1
if [ ! -x "$FERD" ]; then
    echo "compare.sh: no ferd binary at $FERD (cargo build --release): skipping ferd" >&2
    HAVE_FERD=0
elif ! "$FERD" bench --help >/dev/null 2>&1; then
    echo "compare.sh: $FERD has no 'bench' command (an older build?): skipping ferd" >&2
    HAVE_FERD=0
fi

frames_arg=()
[ -n "$FRAMES" ] && frames_arg=(--frames "$FRAMES")

# run_ferd PAIRING ROUND CONFIG; run_peer PAIRING ROUND THREADS.
# Faces are written in round 1 only (both tools alike).
run_ferd() {
    [ "$HAVE_FERD" = 1 ] || return 0
    local faces=()
    [ "$2" = 1 ] && faces=(--faces-out "$OUT/$1-ferd.faces.jsonl")
    if ! "$FERD" bench --config "$3" --source "$CLIP" "${frames_arg[@]}" --json "${faces[@]}" \
        >"$OUT/$1-ferd-r$2.json" 2>"$OUT/$1-ferd-r$2.log"; then
        echo "compare.sh: ferd bench failed (pairing $1, round $2): see $OUT/$1-ferd-r$2.log" >&2
        tail -3 "$OUT/$1-ferd-r$2.log" >&2 || true
        rm -f "$OUT/$1-ferd-r$2.json"
    fi
}
run_peer() {
    local faces=()
    [ "$2" = 1 ] && faces=(--faces-out "$OUT/$1-peer.faces.jsonl")
    if ! "$PY" benches/peer/peer.py --clip "$CLIP" --config benches/same-work.toml --threads "$3" \
        "${frames_arg[@]}" --json "${faces[@]}" >"$OUT/$1-peer-r$2.json" 2>"$OUT/$1-peer-r$2.log"; then
        echo "compare.sh: peer failed (pairing $1, round $2): see $OUT/$1-peer-r$2.log" >&2
        tail -3 "$OUT/$1-peer-r$2.log" >&2 || true
        rm -f "$OUT/$1-peer-r$2.json"
    fi
}

{
    echo "ferd: $FERD ($([ "$HAVE_FERD" = 1 ] && "$FERD" --version 2>/dev/null || echo 'not run'))"
    echo "clip: $CLIP; rounds: $ROUNDS; frames: ${FRAMES:-all}; cores: $(nproc)"
    # Both sides pick kernels by instruction set: ratios from machines
    # with different sets do not compare.
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1);" \
        "vector sets: $(grep -m 1 -o -w -E 'avx2|fma|avx512f|avx512_vnni|avx_vnni|asimddp|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "before: $(uptime)"
} | tee "$OUT/env.txt"

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    # Alternate which tool goes first, so a drift in machine load does not
    # always favour the same one.
    if [ $((r % 2)) = 1 ]; then
        run_ferd a "$r" benches/same-work.toml; run_peer a "$r" 1
        run_ferd b "$r" systemd/ferd.toml;      run_peer b "$r" default
    else
        run_peer a "$r" 1;       run_ferd a "$r" benches/same-work.toml
        run_peer b "$r" default; run_ferd b "$r" systemd/ferd.toml
    fi
    echo "after round $r: $(uptime)" | tee -a "$OUT/env.txt"
done

"$PY" - "$OUT" "$ROUNDS" "$MATCH_IOU" <<'EOF'
import json, pathlib, statistics, sys

out, rounds, match_iou = pathlib.Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def runs(pairing, tool):
    got = []
    for r in range(1, rounds + 1):
        p = out / f"{pairing}-{tool}-r{r}.json"
        try:
            text = p.read_text().strip().splitlines()
            got.append(json.loads(text[-1]))
        except (OSError, IndexError, json.JSONDecodeError):
            pass
    return got

def med(rs, key):
    vals = [key(r) for r in rs]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def stage(r, name):
    return r.get("stages", {}).get(name, {}).get("median")

def fmt(v, unit=" ms"):
    return "   -    " if v is None else f"{v:8.3f}{unit}"

def load_faces(path):
    frames = {}
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                frames[int(d["frame"])] = (d.get("boxes", []), d.get("scores"))
    except OSError:
        return None
    return frames

def iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0

def faces_check(label, peer_file, ferd_file):
    peer, ferd = load_faces(out / peer_file), load_faces(out / ferd_file)
    if peer is None or ferd is None:
        print(f"  faces {label}: not checked ({'peer' if peer is None else 'ferd'} faces missing)")
        return None
    common = sorted(set(peer) & set(ferd))
    missed, missed_frames, clear_missed, peer_faces, extra, ious = 0, [], 0, 0, 0, []
    for f in common:
        pboxes, pscores = peer[f]
        fboxes = ferd[f][0]
        peer_faces += len(pboxes)
        miss_here = 0
        for k, pb in enumerate(pboxes):
            best = max((iou(pb, fb) for fb in fboxes), default=0.0)
            if best >= match_iou:
                ious.append(best)
            else:
                miss_here += 1
                if pscores is None or pscores[k] >= 0.8:
                    clear_missed += 1
        extra += sum(1 for fb in fboxes if not any(iou(fb, pb) >= match_iou for pb in pboxes))
        if miss_here:
            missed += miss_here
            missed_frames.append(f)
    print(f"  faces {label}: {len(common)} frames compared, peer faces {peer_faces}, "
          f"missed by ferd {missed} in {len(missed_frames)} frames ({clear_missed} with peer score >= 0.8), "
          f"ferd faces the peer lacks {extra} (match: IoU >= {match_iou}; "
          f"median IoU of matched boxes {statistics.median(ious) if ious else 0:.3f}, lowest {min(ious, default=0):.3f})")
    if missed_frames:
        print(f"    frames with a missed face: {missed_frames[:20]}{' ...' if len(missed_frames) > 20 else ''}")
    if len(common) < max(len(peer), len(ferd)):
        print(f"    note: frame sets differ (peer {len(peer)}, ferd {len(ferd)} frames)")
    return len(missed_frames)

print()
for pairing, title, target in [("a", "(a) same work, one thread: ferd benches/same-work.toml vs peer --threads 1", 1.0),
                               ("b", "(b) as shipped: ferd systemd/ferd.toml vs peer --threads default", 0.5)]:
    ferd, peer = runs(pairing, "ferd"), runs(pairing, "peer")
    print(title)
    print(f"  {'':6}{'runs':>5}{'frame median':>15}{'p95':>11}{'decode':>11}{'detect':>11}{'classify':>11}{'fps':>8}{'faces/fr':>9}")
    for name, rs in (("ferd", ferd), ("peer", peer)):
        print(f"  {name:6}{len(rs):>5}{fmt(med(rs, lambda r: r['frame_ms']['median'])):>15}"
              f"{fmt(med(rs, lambda r: r['frame_ms']['p95']), ''):>11}"
              f"{fmt(med(rs, lambda r: stage(r, 'decode')), ''):>11}{fmt(med(rs, lambda r: stage(r, 'detect')), ''):>11}"
              f"{fmt(med(rs, lambda r: stage(r, 'classify')), ''):>11}"
              f"{fmt(med(rs, lambda r: r.get('fps')), ''):>8}{fmt(med(rs, lambda r: r.get('faces_per_frame')), ''):>9}")
    fm, pm = med(ferd, lambda r: r["frame_ms"]["median"]), med(peer, lambda r: r["frame_ms"]["median"])
    if fm is not None and pm:
        ratio = fm / pm
        verdict = "met" if ratio <= target else "NOT met"
        print(f"  ratio ferd/peer (median of rounds of median frame time): {ratio:.3f}  target <= {target}: {verdict}")
        per_round = [f["frame_ms"]["median"] / p["frame_ms"]["median"] for f, p in zip(ferd, peer)]
        print(f"  per-round ratios: {', '.join(f'{x:.3f}' for x in per_round)}")
    else:
        print(f"  ratio ferd/peer: not available (ferd runs {len(ferd)}, peer runs {len(peer)}); target <= {target}")
    if pairing == "a":
        faces_check("(a) same-work ferd vs same-work peer", "a-peer.faces.jsonl", "a-ferd.faces.jsonl")
    else:
        n = faces_check("(b) as-shipped ferd vs same-work peer", "a-peer.faces.jsonl", "b-ferd.faces.jsonl")
        if n is not None:
            print(f"  target: no face missed that the same-work peer finds: {'met' if n == 0 else 'NOT met'}")
    print()
print(f"results: {out}")
EOF
