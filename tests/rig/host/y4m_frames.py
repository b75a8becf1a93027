#!/usr/bin/env python3
"""Cuts frames out of a mono YUV4MPEG2 clip as one-frame clips.

    y4m_frames.py CLIP OUTDIR

Writes OUTDIR/NAME.y4m for each frame named in FRAMES below: a mono
YUV4MPEG2 clip of that one frame, which the guest's vout (host/vout.c) plays
into vivid's output and keeps showing, looped into its capture device; and
OUTDIR/steps.y4m, the neutral and the distress frame as a two-frame clip,
for vout's `step` mode (the latency scenario switches between them).
Standard library only.
"""
import os
import sys

# Frames of examples/demo.y4m (see examples/demo.txt: 5 fps, the first face
# is neutral 0-2 s, sad/fear/angry 3-10 s, happy 11-16 s). Chosen with the
# shipped models and the rig's detector input (224x168), on the frame scaled
# to 640x480 as vout does: frame 2 (a neutral face) is found with score 0.998
# and a distress mass (angry + fear + sad) of 0.06; frame 27 (an angry face)
# with score 0.992 and a distress mass of 0.91. (Frame 42, chosen before,
# scored only 0.77 with the current demo and was not found in the guest.)
# Rerun the check (`ferd detect --config tests/rig/ferd-rig.toml --json`)
# when the models or the demo change.
FRAMES = {"neutral": 2, "distress": 27}


def read_frames(path):
    with open(path, "rb") as f:
        data = f.read()
    header, _, rest = data.partition(b"\n")
    fields = header.split()
    if fields[0] != b"YUV4MPEG2":
        sys.exit(f"{path}: not a YUV4MPEG2 file")
    w = int(next(x[1:] for x in fields if x.startswith(b"W")))
    h = int(next(x[1:] for x in fields if x.startswith(b"H")))
    if b"Cmono" not in fields:
        sys.exit(f"{path}: expected a mono (Cmono) clip")
    size = w * h
    frames, pos = [], 0
    while pos < len(rest):
        line_end = rest.index(b"\n", pos)
        start = line_end + 1
        frames.append(rest[start : start + size])
        pos = start + size
    return header, frames


def main():
    clip, outdir = sys.argv[1], sys.argv[2]
    header, frames = read_frames(clip)
    os.makedirs(outdir, exist_ok=True)
    for name, index in FRAMES.items():
        with open(os.path.join(outdir, name + ".y4m"), "wb") as f:
            f.write(header + b"\nFRAME\n" + frames[index])
    with open(os.path.join(outdir, "steps.y4m"), "wb") as f:
        f.write(header + b"\n" + b"".join(b"FRAME\n" + frames[FRAMES[k]] for k in ("neutral", "distress")))


if __name__ == "__main__":
    main()
