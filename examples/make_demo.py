#!/usr/bin/env python3
"""Builds examples/demo.y4m, the bundled default input of `ferd run`.

FER2013 `val/` faces (48×48) are enlarged and placed on a larger canvas, so
the detector sees faces with context, in a scripted 21-second scene at
5 fps (mono YUV4MPEG2, 256×192), one picture per second:

    0– 3 s  one face, neutral
    3–11 s  the same place, sad / fearful / angry faces  -> `distress` raised
   11–15 s  happy faces                                  -> `distress` clears, `smile` raised
   15–17 s  nobody                                       -> face lost, `smile` clears
   17–21 s  two faces: happy at the left, surprised at the right -> `smile` again,
            cleared by the end of the input

Which faces: for each class, the first val/ images (sorted by name) that
`ferd detect` (the release build, with the shipped models) finds as exactly
one face of their labelled class, with a probability of at least MIN_P,
when placed on the canvas. (Without the floor, a face taken as angry by a
narrow margin over disgust let the distress mass dip under the rule's 0.6
mid-scene and cleared the alert early.) The demo is meant to show the
pipeline, not the classifier's errors (`ferd eval` measures those); rerun
this script when the shipped model changes.

Usage (from the repository root, needs numpy and pillow):
    cargo build --release
    python examples/make_demo.py [--data ../shared/datasets/fer2013] [--out examples/demo.y4m]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

W, H, FPS = 256, 192, 5
FACE = 96  # enlarged face side on the canvas
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
LEFT = (40, 40)    # top-left corner of the main face
RIGHT = (150, 56)  # top-left corner of the second face
MIN_P = 0.6  # the labelled class's probability a chosen face must reach

# (seconds, [(classes to draw from, position), ...]); one image per second.
SCRIPT = [
    (3, [(["neutral"], LEFT)]),
    (8, [(["sad", "fear", "angry"], LEFT)]),
    (4, [(["happy"], LEFT)]),
    (2, []),
    (4, [(["happy"], LEFT), (["surprise"], RIGHT)]),
]


def background():
    """A soft vertical gradient with a faint fixed texture, like a wall."""
    rng = np.random.default_rng(7)
    y = np.linspace(150, 90, H)[:, None]
    bg = np.repeat(y, W, axis=1) + rng.normal(0, 2.0, (H, W))
    return np.clip(bg, 0, 255)


def paste(canvas, face, pos):
    """Pastes a face with a feathered border so no hard square edge shows."""
    img = np.asarray(Image.fromarray(face).resize((FACE, FACE), Image.BICUBIC), dtype=np.float64)
    r = np.minimum(np.arange(FACE), np.arange(FACE)[::-1])
    ramp = np.clip(r / 8.0, 0, 1)
    alpha = np.minimum(ramp[:, None], ramp[None, :])
    x, y = pos
    region = canvas[y:y + FACE, x:x + FACE]
    canvas[y:y + FACE, x:x + FACE] = alpha * img + (1 - alpha) * region


def ferd_detect(ferd, images):
    """Runs `ferd detect --json` on images; returns {path: [faces]}."""
    out = subprocess.run([str(ferd), "detect", "--json", *map(str, images)],
                         check=True, capture_output=True, text=True).stdout
    result = {}
    for line in out.splitlines():
        d = json.loads(line)
        result[d["image"]] = d["faces"]
    return result


def pick(ferd, data, cls, n, pos, used, tmp):
    """The first n images of a class (by name) that ferd itself, on the
    canvas at `pos`, finds as exactly one face of the labelled class, with
    at least MIN_P of probability."""
    candidates = [p for p in sorted((data / "val" / cls).glob("*.jpg")) if p not in used][:200]
    faces, canvases = {}, {}
    for i, path in enumerate(candidates):
        face = np.asarray(Image.open(path).convert("L"))
        canvas = background()
        paste(canvas, face, pos)
        png = tmp / f"{cls}-{i}.png"
        Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8)).save(png)
        faces[path], canvases[path] = face, png
    found = ferd_detect(ferd, canvases.values())
    out = []
    for path in candidates:
        got = found[str(canvases[path])]
        if len(got) == 1 and got[0]["expression"] == cls and got[0]["probs"][cls] >= MIN_P:
            out.append((path, faces[path]))
            used.add(path)
            if len(out) == n:
                return out
    sys.exit(f"not enough {cls} faces in {data / 'val' / cls} that the shipped models recognise")


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, default=root.parent / "shared/datasets/fer2013")
    ap.add_argument("--out", type=pathlib.Path, default=root / "examples/demo.y4m")
    ap.add_argument("--ferd", type=pathlib.Path, default=root / "target/release/ferd")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    used = set()
    frames = []
    listing = []
    for seconds, slots in SCRIPT:
        # Choose one image per second per slot, cycling through the classes.
        chosen = []
        for classes, pos in slots:
            per_class = {c: pick(args.ferd, args.data, c, -(-seconds // len(classes)), pos, used, tmp) for c in classes}
            seq = [per_class[classes[i % len(classes)]][i // len(classes)] for i in range(seconds)]
            chosen.append((seq, pos))
        for s in range(seconds):
            canvas = background()
            for seq, pos in chosen:
                paste(canvas, seq[s][1], pos)
                listing.append(f"{len(frames) // FPS:>2}s {seq[s][0].parent.name}/{seq[s][0].name} at {pos}")
            frame = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
            frames.extend([frame] * FPS)
    with open(args.out, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 Cmono\n".encode())
        for fr in frames:
            f.write(b"FRAME\n")
            f.write(fr.tobytes())
    (args.out.with_suffix(".txt")).write_text(
        "Faces in demo.y4m (FER2013 PublicTest images; made by examples/make_demo.py):\n" + "\n".join(listing) + "\n"
    )
    print(f"{args.out}: {len(frames)} frames {W}x{H} at {FPS} fps")


if __name__ == "__main__":
    main()
