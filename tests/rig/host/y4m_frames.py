#!/usr/bin/env python3
"""Cuts frames out of a mono YUV4MPEG2 clip as raw YUYV camera frames.

    y4m_frames.py CLIP OUTDIR WIDTH HEIGHT

Writes OUTDIR/NAME.yuyv for each frame named in FRAMES below, scaled (nearest
neighbour) to fill WIDTH x HEIGHT, grey (U = V = 128): what the vivid output
device takes and loops into its capture device. Standard library only.
"""
import os
import sys

# Frames of examples/demo.y4m (see examples/demo.txt: 5 fps, the first face
# is neutral 0-2 s, sad/fear/angry 3-10 s, happy 11-16 s). Chosen where both
# the quick and the distilled expression model agree clearly: frame 2 has
# a distress mass (angry + fear + sad) of 0.04-0.07, frame 42 of 0.88-0.94.
FRAMES = {"neutral": 2, "sad": 42}


def read_frames(path):
    with open(path, "rb") as f:
        data = f.read()
    header, _, rest = data.partition(b"\n")
    fields = header.split()
    if fields[0] != b"YUV4MPEG2":
        sys.exit(f"{path}: not a YUV4MPEG2 file")
    w = int(next(x[1:] for x in fields if x.startswith(b"W")))
    h = int(next(x[1:] for x in fields if x.startswith(b"H")))
    mono = b"Cmono" in fields
    size = w * h if mono else w * h * 3 // 2
    frames, pos = [], 0
    while pos < len(rest):
        line_end = rest.index(b"\n", pos)
        start = line_end + 1
        frames.append(rest[start : start + w * h])  # luma only
        pos = start + size
    return w, h, frames


def to_yuyv(luma, w, h, ow, oh):
    xmap = [min(w - 1, x * w // ow) for x in range(ow)]
    rows = {}
    out = bytearray()
    for y in range(oh):
        sy = min(h - 1, y * h // oh)
        if sy not in rows:
            src = luma[sy * w : (sy + 1) * w]
            row = bytearray(ow * 2)
            row[0::2] = bytes(src[x] for x in xmap)
            row[1::2] = b"\x80" * ow
            rows[sy] = bytes(row)
        out += rows[sy]
    return bytes(out)


def main():
    clip, outdir, ow, oh = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    w, h, frames = read_frames(clip)
    os.makedirs(outdir, exist_ok=True)
    for name, index in FRAMES.items():
        with open(os.path.join(outdir, name + ".yuyv"), "wb") as f:
            f.write(to_yuyv(frames[index], w, h, ow, oh))


if __name__ == "__main__":
    main()
