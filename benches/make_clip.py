#!/usr/bin/env python3
"""Builds the benchmark clip: 900 frames of 640×480 colour YUV4MPEG2 (4:2:0).

One to three faces per frame, moving slowly, each 110–220 px wide, on a
coloured gradient with a fixed texture (blobs plus grain, as `ferd eval
--scenes` draws) and a few soft shapes, so the detector has background to
reject. The faces are FER2013 PublicTest images (`val/<class>/*.jpg`, 48×48
grey), enlarged (bicubic), tinted to a skin tone and pasted with a feathered
border (as examples/make_demo.py does). Images taken: the val/ files in a
fixed shuffled order, less near-blank ones and the fixed SKIP list (ones the
shipped detector does not find reliably at 110 px), so nearly every face in
the clip is found by the same-work pipeline.

The clip is 30 s at 30 fps in ten 3-second segments; the number of faces per
segment follows COUNTS. Each face slot keeps one image for a segment and
drifts along a slow path (about 1 px a frame) while its size breathes
within 110–220 px (less where three faces share the width).

Deterministic: the same data folder gives the same bytes (fixed seeds,
sorted file lists, no ferd in the loop). The true boxes (the pasted squares)
go to CLIP.truth.jsonl beside the clip, one JSON line per frame:
{"frame": i, "boxes": [[x, y, w, h], ...]}.

The pixels are BT.601 limited range (Y 16–235), which is what ferd's y4m
reader and FFmpeg (OpenCV's VideoCapture) both assume for a y4m clip.

Usage (from the repository root; needs numpy and pillow only):
    python benches/make_clip.py [OUT] [--data ../shared/datasets/fer2013] [--frames 900]
OUT defaults to target/bench/clip.y4m (about 415 MB: never commit it).
"""

import argparse
import json
import math
import pathlib
import sys

import numpy as np
from PIL import Image

W, H, FPS = 640, 480, 30
SEGMENT = 90  # frames per segment (3 s)
COUNTS = [1, 2, 3, 2, 1, 3, 2, 3, 1, 2]  # faces per segment: 1.9 on average
MIN_SIDE, MAX_SIDE = 110, 220
FEATHER = 10  # px of the alpha ramp at the pasted square's border
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SEED = 20261130
# Images passed over: among the first ones of the shuffled order, those the
# shipped detector (retinaface-mnet025 at 320x240, min_score 0.7) scored
# below 0.88 at any of 110, 150, 190 and 220 px on this background (probed
# once with benches/peer/peer.py's Detector; many FER2013 crops are too
# tight, too small or too odd to be found at 110 px). Kept as a fixed list
# so that the clip needs neither the models nor onnxruntime to be rebuilt.
SKIP = {
    "PublicTest_14136410.jpg", "PublicTest_86411613.jpg", "PublicTest_57272892.jpg",
    "PublicTest_21227762.jpg", "PublicTest_11074159.jpg", "PublicTest_97469237.jpg",
    "PublicTest_26979925.jpg", "PublicTest_25058253.jpg", "PublicTest_85809857.jpg",
    "PublicTest_23931269.jpg", "PublicTest_56624502.jpg", "PublicTest_14132514.jpg",
    "PublicTest_30043768.jpg", "PublicTest_68071658.jpg", "PublicTest_79434516.jpg",
    "PublicTest_47189506.jpg",
}


def hash2(a, b):
    """A 32-bit mix of two integer arrays (deterministic texture)."""
    h = (a.astype(np.uint64) * np.uint64(0x9E3779B1) + b.astype(np.uint64) * np.uint64(0x85EBCA77)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    return h.astype(np.float64) / 4294967295.0 - 0.5


def background():
    """RGB float canvas: a warm-to-cool diagonal gradient, coarse blobs on a
    24-px lattice, fine grain, and a few soft-edged shapes (a 'window', a
    'shelf') that are not faces."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    t = (xs / W * 0.6 + ys / H * 0.4)[..., None]
    top = np.array([196.0, 176.0, 150.0])
    bottom = np.array([92.0, 112.0, 138.0])
    img = top * (1 - t) + bottom * t
    cell = 24
    gx, gy = (xs // cell).astype(np.int64), (ys // cell).astype(np.int64)
    fx, fy = (xs % cell) / cell, (ys % cell) / cell
    blob = ((hash2(gx, gy) * (1 - fx) + hash2(gx + 1, gy) * fx) * (1 - fy)
            + (hash2(gx, gy + 1) * (1 - fx) + hash2(gx + 1, gy + 1) * fx) * fy)
    grain = hash2(xs.astype(np.int64) + 1000, ys.astype(np.int64) + 7000)
    img += (50.0 * blob + 14.0 * grain)[..., None]
    # Soft rectangles: a bright window and a dark shelf.
    for (x0, y0, x1, y1, colour) in [(470, 30, 610, 150, (225, 230, 235)),
                                    (20, 380, 300, 410, (70, 55, 45)),
                                    (520, 300, 600, 470, (120, 90, 70))]:
        mx = np.clip(np.minimum(xs - x0, x1 - xs) / 4.0, 0, 1)
        my = np.clip(np.minimum(ys - y0, y1 - ys) / 4.0, 0, 1)
        a = (mx * my)[..., None]
        img = img * (1 - a) + np.array(colour, dtype=np.float64) * a
    return np.clip(img, 0, 255)


def rgb_to_i420(rgb):
    """RGB uint8-range floats (H×W×3) → I420 bytes, BT.601 limited range,
    chroma as the mean of each 2×2 block (centred siting, C420jpeg)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0

    def sub(c):
        return (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) / 4.0

    planes = [y, sub(cb), sub(cr)]
    return b"".join(np.clip(np.round(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def face_images(data):
    """All val/ images, in a fixed shuffled order (classes interleaved)."""
    paths = []
    for cls in LABELS:
        paths += sorted((data / "val" / cls).glob("*.jpg"))
    if not paths:
        sys.exit(f"no images under {data / 'val'}/<class>/*.jpg")
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(paths))
    return [paths[i] for i in order]


def usable(face):
    """Skips near-blank or very flat images (FER2013 has a few), which no
    detector can be expected to find."""
    return face.std() > 30 and 40 < face.mean() < 215


def alpha_mask(side):
    r = np.minimum(np.arange(side), np.arange(side)[::-1]).astype(np.float64)
    ramp = np.clip((r + 0.5) / FEATHER, 0, 1)
    return np.minimum(ramp[:, None], ramp[None, :])[..., None]


def plan(frames, images, rng):
    """Per frame, the faces to draw: (image index, x, y, side)."""
    segments = -(-frames // SEGMENT)
    next_image = 0
    out = [[] for _ in range(frames)]
    for s in range(segments):
        n = COUNTS[s % len(COUNTS)]
        lane = W / n
        max_side = min(MAX_SIDE, int(lane) - 24)
        for k in range(n):
            img = next_image
            next_image += 1
            # A slow path: linear drift plus a gentle sway, inside the lane.
            phase = rng.uniform(0, 2 * math.pi)
            vx = rng.uniform(-0.6, 0.6)
            vy = rng.uniform(-0.5, 0.5)
            s0 = rng.uniform(MIN_SIDE, max_side)
            ds = rng.uniform(-0.4, 0.4)
            for i in range(SEGMENT):
                f = s * SEGMENT + i
                if f >= frames:
                    break
                side = s0 + ds * i + 12 * math.sin(phase + i / 25.0)
                side = int(round(min(max(side, MIN_SIDE), max_side)))
                cx = (k + 0.5) * lane + vx * (i - SEGMENT / 2) + 8 * math.sin(phase + i / 30.0)
                cy = H * 0.45 + (k - (n - 1) / 2) * 30 + vy * (i - SEGMENT / 2) + 6 * math.cos(phase + i / 20.0)
                x = int(round(min(max(cx - side / 2, k * lane + 4), (k + 1) * lane - side - 4)))
                y = int(round(min(max(cy - side / 2, 4), H - side - 4)))
                out[f].append((img, x, y, side))
    return out, next_image


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=pathlib.Path, default=root / "target/bench/clip.y4m")
    ap.add_argument("--data", type=pathlib.Path, default=root.parent / "shared/datasets/fer2013")
    ap.add_argument("--frames", type=int, default=900)
    args = ap.parse_args()
    if args.frames < 1:
        sys.exit("--frames must be at least 1")

    rng = np.random.default_rng(SEED)
    paths = face_images(args.data)
    frames_plan, needed = plan(args.frames, paths, rng)
    # The first `needed` usable images, tinted to one of a few skin tones.
    tones = np.array([[1.00, 0.84, 0.72], [0.96, 0.78, 0.62], [0.80, 0.62, 0.50], [1.00, 0.88, 0.80]])
    faces = []
    for p in paths:
        if len(faces) == needed:
            break
        if p.name in SKIP:
            continue
        grey = np.asarray(Image.open(p).convert("L"))
        if usable(grey):
            faces.append((p, grey, tones[len(faces) % len(tones)]))
    if len(faces) < needed:
        sys.exit(f"only {len(faces)} usable images, {needed} needed")

    bg = background()
    masks = {}
    scaled = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = args.out.with_name(args.out.stem + ".truth.jsonl")
    with open(args.out, "wb") as clip, open(truth_path, "w") as truth:
        clip.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for f, placed in enumerate(frames_plan):
            canvas = bg.copy()
            boxes = []
            for img, x, y, side in placed:
                key = (img, side)
                if key not in scaled:
                    _, grey, tone = faces[img]
                    big = np.asarray(Image.fromarray(grey).resize((side, side), Image.BICUBIC), dtype=np.float64)
                    if len(scaled) > 64:  # keep the cache small
                        scaled.clear()
                    scaled[key] = big[..., None] * tone
                if side not in masks:
                    masks[side] = alpha_mask(side)
                a = masks[side]
                region = canvas[y:y + side, x:x + side]
                canvas[y:y + side, x:x + side] = a * scaled[key] + (1 - a) * region
                boxes.append([x, y, side, side])
            clip.write(b"FRAME\n")
            clip.write(rgb_to_i420(canvas))
            truth.write(json.dumps({"frame": f, "boxes": boxes}) + "\n")
    listing = args.out.with_name(args.out.stem + ".faces.txt")
    listing.write_text("".join(f"{i}: {p.parent.name}/{p.name}\n" for i, (p, _, _) in enumerate(faces)))
    n_faces = sum(len(p) for p in frames_plan)
    print(f"{args.out}: {args.frames} frames {W}x{H} at {FPS} fps, {n_faces / args.frames:.2f} faces per frame "
          f"({len(faces)} images); truth in {truth_path}")


if __name__ == "__main__":
    main()
