#!/usr/bin/env python3
"""Builds examples/demo.y4m, the bundled default input of `ferd run`.

FER2013 `val/` faces (48×48) are enlarged and placed on a larger canvas, so
the detector sees faces with context, in a scripted 20-second scene at
5 fps (mono YUV4MPEG2, 256×192):

    0– 4 s  one face, neutral
    4–10 s  the same place, sad / fearful / angry faces  -> `distress` raised
   10–14 s  happy faces                                  -> `distress` clears, `smile` raised
   14–18 s  a second, surprised face appears at the right
   18–20 s  nobody                                       -> faces lost, alerts clear

Which faces: for each class, the first val/ images (sorted by name) that
the shipped detector finds exactly once on the canvas and that the shipped
classifier assigns to their labelled class. The demo is meant to show the
pipeline, not the classifier's errors (`ferd eval` measures those); rerun
this script when the shipped model changes.

Usage (from the repository root, with training/requirements.txt installed):
    python examples/make_demo.py [--data ../shared/datasets/fer2013] [--out examples/demo.y4m]
"""

import argparse
import pathlib
import sys
import tomllib

import numpy as np
import onnxruntime as ort
from PIL import Image

W, H, FPS = 256, 192, 5
FACE = 96  # enlarged face side on the canvas
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
LEFT = (40, 40)    # top-left corner of the main face
RIGHT = (150, 56)  # top-left corner of the second face

# (seconds, [(classes to draw from, position), ...]); one image per second.
SCRIPT = [
    (4, [(["neutral"], LEFT)]),
    (6, [(["sad", "fear", "angry"], LEFT)]),
    (4, [(["happy"], LEFT)]),
    (4, [(["happy"], LEFT), (["surprise"], RIGHT)]),
    (2, []),
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


class Models:
    def __init__(self, root):
        self.det = self._load(root / "models/retinaface-mnet025.toml")
        self.cls = self._load(root / "models/expression.toml")

    @staticmethod
    def _load(manifest):
        m = tomllib.loads(manifest.read_text())
        sess = ort.InferenceSession(str(manifest.parent / m["model"]["file"]))
        return m, sess

    def faces(self, canvas):
        """Number of faces RetinaFace finds (score ≥ 0.7) after NMS."""
        m, sess = self.det
        x = np.repeat(canvas[None, :, :], 3, axis=0).astype(np.float32)
        x -= np.array(m["input"]["mean"], np.float32)[:, None, None]
        loc, conf, _ = sess.run(None, {sess.get_inputs()[0].name: x[None]})
        scores = conf[0, :, 1]
        return count_after_nms(anchors(m, W, H), loc[0], scores)

    def label(self, face):
        m, sess = self.cls
        x = (face.astype(np.float32) * m["input"]["scale"] - m["input"]["mean"][0]) / m["input"]["std"][0]
        out = sess.run(None, {sess.get_inputs()[0].name: x[None, None]})[0][0]
        return int(np.argmax(out))


def anchors(m, w, h):
    d = m["detector"]
    out = []
    for stride, sizes in zip(d["strides"], d["anchor_sizes"]):
        for y in range(-(-h // stride)):
            for x in range(-(-w // stride)):
                for s in sizes:
                    out.append([(x + 0.5) * stride / w, (y + 0.5) * stride / h, s / w, s / h])
    return np.array(out, np.float32)


def count_after_nms(a, loc, scores, thr=0.7, iou=0.4):
    keep = scores >= thr
    a, loc, scores = a[keep], loc[keep], scores[keep]
    cx = a[:, 0] + loc[:, 0] * 0.1 * a[:, 2]
    cy = a[:, 1] + loc[:, 1] * 0.1 * a[:, 3]
    bw = a[:, 2] * np.exp(loc[:, 2] * 0.2)
    bh = a[:, 3] * np.exp(loc[:, 3] * 0.2)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    kept = []
    for i in np.argsort(-scores):
        b = boxes[i]
        ok = True
        for k in kept:
            ix = max(0, min(b[2], k[2]) - max(b[0], k[0]))
            iy = max(0, min(b[3], k[3]) - max(b[1], k[1]))
            inter = ix * iy
            union = (b[2] - b[0]) * (b[3] - b[1]) + (k[2] - k[0]) * (k[3] - k[1]) - inter
            if inter / union > iou:
                ok = False
                break
        if ok:
            kept.append(b)
    return len(kept)


def pick(models, data, cls, n, pos, used):
    """The first n images of a class that the models handle as labelled."""
    out = []
    for path in sorted((data / "val" / cls).glob("*.jpg")):
        if path in used:
            continue
        face = np.asarray(Image.open(path).convert("L"))
        if models.label(face) != LABELS.index(cls):
            continue
        canvas = background()
        paste(canvas, face, pos)
        if models.faces(canvas.astype(np.uint8).astype(np.float32)) != 1:
            continue
        out.append((path, face))
        used.add(path)
        if len(out) == n:
            return out
    sys.exit(f"not enough usable {cls} faces in {data / 'val' / cls}")


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=pathlib.Path, default=root.parent / "shared/datasets/fer2013")
    ap.add_argument("--out", type=pathlib.Path, default=root / "examples/demo.y4m")
    args = ap.parse_args()
    models = Models(root)
    used = set()
    frames = []
    listing = []
    for seconds, slots in SCRIPT:
        # Choose one image per second per slot, cycling through the classes.
        chosen = []
        for classes, pos in slots:
            per_class = {c: pick(models, args.data, c, -(-seconds // len(classes)), pos, used) for c in classes}
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
