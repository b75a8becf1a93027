#!/usr/bin/env python3
"""Builds the image fixtures in tests/data/faces/ from FER2013 val/ faces.

Faces are enlarged to 96×96 and pasted at known places on a 320×240 grey
canvas; tests/cli.rs asserts the detector's boxes against those places.
Also writes the bad inputs: a truncated JPEG, a 1×1 image, and a PNG whose
header claims 20000×20000 pixels (a few bytes on disk).

Usage: python tests/data/make_fixtures.py [--data ../shared/datasets/fer2013]
"""
import argparse
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

FACE = 96


def canvas_with(faces, data):
    c = np.full((240, 320), 128, np.uint8)
    for rel, (x, y) in faces:
        im = Image.open(data / "val" / rel).convert("L").resize((FACE, FACE), Image.BICUBIC)
        c[y:y + FACE, x:x + FACE] = np.asarray(im)
    return Image.fromarray(c)


def png_claiming(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # one row only
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main():
    root = pathlib.Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=pathlib.Path, default=root.parent / "shared/datasets/fer2013")
    args = ap.parse_args()
    out = root / "tests/data/faces"
    out.mkdir(parents=True, exist_ok=True)
    canvas_with([("happy/PublicTest_10130075.jpg", (112, 72))], args.data).save(out / "one_face.png")
    canvas_with([("surprise/PublicTest_10709121.jpg", (112, 72))], args.data).save(out / "one_face.jpg", quality=92)
    canvas_with([("neutral/PublicTest_10014592.jpg", (30, 50)), ("sad/PublicTest_10404299.jpg", (180, 80))],
                args.data).save(out / "two_faces.png")
    canvas_with([], args.data).save(out / "no_face.png")
    Image.new("L", (1, 1), 90).save(out / "tiny.png")
    jpg = (out / "one_face.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (out / "huge.png").write_bytes(png_claiming(20000, 20000))
    print("fixtures written to", out)


if __name__ == "__main__":
    main()
