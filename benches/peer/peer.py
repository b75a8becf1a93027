#!/usr/bin/env python3
"""The peer: ferd's per-frame pipeline written the way Python users write it
today, to measure ferd against.

Per frame: OpenCV decode (cv2.VideoCapture on the .y4m, through OpenCV's
bundled FFmpeg, to BGR) -> OpenCV resize into the detector input (letterbox
as ferd does: scaled to fit, top-left, padding at the mean) -> NumPy
normalisation -> onnxruntime RetinaFace -> NumPy anchor decode, score
threshold, minimum size -> cv2.dnn.NMSBoxes -> for each face a 48x48 grey
crop with OpenCV (square around the box, margin, turned so the eyes are
level when `align` is on) -> onnxruntime classifier (one face per run: the
shipped model's batch dimension is fixed at 1) -> NumPy softmax.

Settings come from a ferd config (default benches/same-work.toml): its
[detector] and [classifier] sections (thresholds, input size, margin, align)
and the model manifests they name (model file, colour order, scale, mean,
std, strides, anchor sizes, variances), so the peer runs the same model
files with the same settings as ferd.

Usage (from the repository root, in target/bench/venv-peer):
    python benches/peer/peer.py [--clip target/bench/clip.y4m] [--config benches/same-work.toml]
        [--threads 1|default] [--frames N] [--warmup 5] [--detector-size WxH] [--json] [--faces-out FILE]

--threads 1: onnxruntime intra_op_num_threads=1 and inter_op_num_threads=1,
cv2.setNumThreads(1). --threads default: onnxruntime's and OpenCV's defaults.

--json prints one JSON object on stdout:
    {"tool": "peer", "frames": N, "faces_per_frame": F, "threads": "1"|"default",
     "frame_ms": {"median": x, "p95": x, "max": x},
     "stages": {"decode": {...}, "detect": {...}, "classify": {...}}, "fps": x}
The first --warmup frames (5, as `ferd bench`) run but are not counted.
--faces-out FILE writes one JSON line per counted frame, its index in the
clip from 0 (so the first line is frame 5 after the warm-up):
    {"frame": i, "boxes": [[x, y, w, h], ...], "scores": [...], "expressions": [...]}
(boxes in frame pixels, as ferd bench --faces-out; scores and expression
indices are extra).
"""

import argparse
import json
import math
import pathlib
import sys
import time
import tomllib

import cv2
import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# ferd's defaults for keys a config leaves out (src/config.rs).
DETECTOR_DEFAULTS = {"model": "models/retinaface-mnet025.toml", "min_score": 0.7, "min_face_size": 24,
                     "nms_iou": 0.4, "input_size": [320, 240], "max_faces": 8}
CLASSIFIER_DEFAULTS = {"model": "models/expression.toml", "margin": 0.0, "align": True}


def load_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def find_manifest(config_path, name):
    """A manifest named by a config key: relative to the config file, else
    by file name in the repository's models/ (ferd also looks there)."""
    p = pathlib.Path(name)
    if p.is_absolute():
        return p
    for cand in (config_path.parent / p, ROOT / "models" / p.name):
        if cand.exists():
            return cand.resolve()
    sys.exit(f"{config_path}: model manifest {name} not found")


class Manifest:
    def __init__(self, path):
        m = load_toml(path)
        self.path = path
        self.file = path.parent / m["model"]["file"]
        inp = m["input"]
        self.color = inp.get("color", "rgb")
        self.scale = float(inp.get("scale", 1.0))
        self.mean = np.array(inp["mean"], dtype=np.float32)
        self.std = np.array(inp["std"], dtype=np.float32)
        self.shape = inp["shape"]
        self.output_kind = m.get("output", {}).get("kind", "logits")
        self.detector = m.get("detector")


def session(model_file, threads):
    so = ort.SessionOptions()
    if threads == "1":
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), sess_options=so, providers=["CPUExecutionProvider"])


class Detector:
    def __init__(self, manifest, cfg, size, threads):
        self.m = manifest
        self.sess = session(manifest.file, threads)
        self.input_name = self.sess.get_inputs()[0].name
        shape = manifest.shape
        # The manifest's fixed H, W win over the configured size (as in ferd).
        self.w = shape[3] if shape[3] else size[0]
        self.h = shape[2] if shape[2] else size[1]
        d = manifest.detector
        self.variance = np.array(d["variance"], dtype=np.float32)
        anchors = []
        for stride, sizes in zip(d["strides"], d["anchor_sizes"]):
            ny, nx = -(-self.h // stride), -(-self.w // stride)
            ys, xs = np.mgrid[0:ny, 0:nx]
            cx = (xs.ravel() + 0.5) * stride / self.w
            cy = (ys.ravel() + 0.5) * stride / self.h
            for_cell = []
            for s in sizes:
                for_cell.append(np.stack([cx, cy, np.full_like(cx, s / self.w), np.full_like(cy, s / self.h)], 1))
            # Order: cell by cell, the sizes of one cell together.
            anchors.append(np.stack(for_cell, 1).reshape(-1, 4))
        self.anchors = np.concatenate(anchors).astype(np.float32)
        self.min_score = float(cfg["min_score"])
        self.min_face_size = float(cfg["min_face_size"])
        self.nms_iou = float(cfg["nms_iou"])
        self.max_faces = int(cfg["max_faces"])
        # Padding value: the mean, so 0 after normalisation (ferd's letterbox).
        self.pad = (manifest.mean / manifest.scale).tolist()

    def detect(self, frame):
        """Faces of a BGR frame: (boxes [N,4] x,y,w,h, scores [N], landmarks [N,5,2])."""
        fh, fw = frame.shape[:2]
        scale = min(self.w / fw, self.h / fh)
        uw = min(max(round(fw * scale), 1), self.w)
        uh = min(max(round(fh * scale), 1), self.h)
        img = frame if (uw, uh) == (fw, fh) else cv2.resize(frame, (uw, uh), interpolation=cv2.INTER_LINEAR)
        if self.m.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif self.m.color == "grey":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        if (uw, uh) != (self.w, self.h):
            img = cv2.copyMakeBorder(img, 0, self.h - uh, 0, self.w - uw, cv2.BORDER_CONSTANT, value=self.pad)
            if img.ndim == 2:
                img = img[..., None]
        x = (img.astype(np.float32) * self.m.scale - self.m.mean) / self.m.std
        x = x.transpose(2, 0, 1)[None]
        outs = self.sess.run(None, {self.input_name: np.ascontiguousarray(x)})
        # Outputs by their last dimension (4 loc, 2 conf, 10 landmarks), as ferd.
        by_last = {o.shape[-1]: o[0] for o in outs}
        loc, conf, lm = by_last[4], by_last[2], by_last[10]
        scores = conf[:, 1]
        idx = np.nonzero(scores >= self.min_score)[0]
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        if idx.size == 0:
            return empty
        a, l, s = self.anchors[idx], loc[idx], scores[idx]
        vc, vs = self.variance
        cxcy = a[:, :2] + l[:, :2] * vc * a[:, 2:]
        wh = a[:, 2:] * np.exp(l[:, 2:] * vs)
        to_px = np.array([self.w, self.h], np.float32) / scale
        boxes = np.concatenate([(cxcy - wh / 2) * to_px, wh * to_px], 1)
        lms = (a[:, None, :2] + lm[idx].reshape(-1, 5, 2) * vc * a[:, None, 2:]) * to_px
        keep = np.minimum(boxes[:, 2], boxes[:, 3]) >= self.min_face_size
        boxes, s, lms = boxes[keep], s[keep], lms[keep]
        if len(s) == 0:
            return empty
        kept = cv2.dnn.NMSBoxes(boxes.tolist(), s.tolist(), self.min_score, self.nms_iou)
        kept = np.asarray(kept, dtype=np.int64).reshape(-1)[: self.max_faces]
        boxes, s, lms = boxes[kept], s[kept], lms[kept]
        # Clip to the frame.
        x0 = np.clip(boxes[:, 0], 0, fw)
        y0 = np.clip(boxes[:, 1], 0, fh)
        x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, fw)
        y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, fh)
        return np.stack([x0, y0, x1 - x0, y1 - y0], 1), s, lms


class Classifier:
    def __init__(self, manifest, cfg, threads):
        self.m = manifest
        self.sess = session(manifest.file, threads)
        self.input_name = self.sess.get_inputs()[0].name
        self.h, self.w = manifest.shape[2], manifest.shape[3]
        if manifest.color != "grey":
            sys.exit(f"{manifest.path}: the peer handles grey classifiers only")
        self.margin = float(cfg["margin"])
        self.align = bool(cfg["align"])

    def crop(self, grey, box, lm):
        """48x48 grey crop: the square around the box (times 1 + margin),
        turned by the eye line when align is on, as ferd's Crop::for_face.
        Shrinks with INTER_AREA first (no aliasing), then one warpAffine."""
        x, y, w, h = box
        cx, cy = x + w / 2, y + h / 2
        side = max(w, h) * (1 + self.margin)
        angle = 0.0
        if self.align:
            (rx, ry), (lx, ly) = lm[0], lm[1]
            a = math.atan2(ly - ry, lx - rx)
            angle = a if abs(a) <= math.pi / 4 else 0.0
        gh, gw = grey.shape
        # The axis-aligned square that holds the turned crop, clipped to the
        # frame (warpAffine's BORDER_REPLICATE covers the rest).
        half = side * (abs(math.cos(angle)) + abs(math.sin(angle))) / 2 + 2
        x0, y0 = max(int(math.floor(cx - half)), 0), max(int(math.floor(cy - half)), 0)
        x1, y1 = min(int(math.ceil(cx + half)), gw), min(int(math.ceil(cy + half)), gh)
        if x1 - x0 < 1 or y1 - y0 < 1:
            x0, y0, x1, y1 = 0, 0, gw, gh
        roi = grey[y0:y1, x0:x1]
        f = self.w / side
        if f < 1:
            sw, sh = max(round((x1 - x0) * f), 1), max(round((y1 - y0) * f), 1)
            roi = cv2.resize(roi, (sw, sh), interpolation=cv2.INTER_AREA)
            fx, fy = sw / (x1 - x0), sh / (y1 - y0)
        else:
            fx = fy = 1.0
        # Crop centre in roi pixels (OpenCV's pixel centres are integers).
        c = ((cx - x0) * fx - 0.5, (cy - y0) * fy - 0.5)
        m = cv2.getRotationMatrix2D(c, math.degrees(angle), self.w / (side * (fx + fy) / 2))
        m[0, 2] += (self.w - 1) / 2 - c[0]
        m[1, 2] += (self.h - 1) / 2 - c[1]
        return cv2.warpAffine(roi, m, (self.w, self.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def classify(self, frame, boxes, lms):
        """Probabilities [N, 7] for the faces of a BGR frame."""
        if len(boxes) == 0:
            return np.zeros((0, 7), np.float32)
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        out = []
        for box, lm in zip(boxes, lms):
            c = self.crop(grey, box, lm)
            x = ((c.astype(np.float32) * self.m.scale - self.m.mean[0]) / self.m.std[0])[None, None]
            out.append(self.sess.run(None, {self.input_name: x})[0].reshape(-1))
        logits = np.stack(out)
        if self.m.output_kind == "probabilities":
            return logits
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class Y4mNumpy:
    """Fallback reader (only if cv2.VideoCapture cannot open the clip):
    y4m parsed with NumPy, I420 -> BGR with cv2.cvtColor."""

    def __init__(self, path):
        self.f = open(path, "rb")
        header = self.f.readline().decode().split()
        fields = {p[0]: p[1:] for p in header[1:]}
        self.w, self.h = int(fields["W"]), int(fields["H"])
        if not fields.get("C", "420").startswith("420"):
            sys.exit(f"{path}: only 4:2:0 clips")
        self.n = self.w * self.h * 3 // 2

    def read(self):
        if not self.f.readline():
            return False, None
        buf = np.frombuffer(self.f.read(self.n), np.uint8)
        if buf.size < self.n:
            return False, None
        return True, cv2.cvtColor(buf.reshape(self.h * 3 // 2, self.w), cv2.COLOR_YUV2BGR_I420)


def stats(ms):
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"median": 0.0, "p95": 0.0, "max": 0.0}
    return {"median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=pathlib.Path, default=ROOT / "target/bench/clip.y4m")
    ap.add_argument("--config", type=pathlib.Path, default=ROOT / "benches/same-work.toml",
                    help="ferd config whose [detector]/[classifier] settings and models to use")
    ap.add_argument("--threads", choices=["1", "default"], default="1")
    ap.add_argument("--frames", type=int, default=0, help="count at most N frames (0: the whole clip)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="frames run first and not counted nor written to --faces-out (as ferd bench)")
    ap.add_argument("--detector-size", help="WxH, overrides the config's detector input_size")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--faces-out", type=pathlib.Path, help="JSON lines of the boxes found per frame")
    args = ap.parse_args()

    if args.threads == "1":
        cv2.setNumThreads(1)
    cfg = load_toml(args.config)
    dcfg = {**DETECTOR_DEFAULTS, **cfg.get("detector", {})}
    ccfg = {**CLASSIFIER_DEFAULTS, **cfg.get("classifier", {})}
    size = dcfg["input_size"]
    if args.detector_size:
        try:
            size = [int(v) for v in args.detector_size.lower().split("x")]
            assert len(size) == 2 and min(size) > 0
        except (ValueError, AssertionError):
            sys.exit(f"--detector-size {args.detector_size!r}: expected WxH, e.g. 320x240")
    detector = Detector(Manifest(find_manifest(args.config, dcfg["model"])), dcfg, size, args.threads)
    classifier = Classifier(Manifest(find_manifest(args.config, ccfg["model"])), ccfg, args.threads)

    if not args.clip.exists():
        sys.exit(f"{args.clip}: no such clip (make it with benches/make_clip.py)")
    cap = cv2.VideoCapture(str(args.clip), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        print(f"peer: cv2.VideoCapture cannot open {args.clip}; reading it with NumPy", file=sys.stderr)
        cap = Y4mNumpy(args.clip)

    faces_out = open(args.faces_out, "w") if args.faces_out else None
    t_decode, t_detect, t_classify, t_frame, t_cpu = [], [], [], [], []
    n_faces = 0
    warm = 0  # warm-up frames done
    counted = 0
    i = 0  # source index of the frame
    clock = time.perf_counter
    start = clock()
    while args.frames <= 0 or counted < args.frames:
        c0 = time.process_time()
        t0 = clock()
        ok, frame = cap.read()
        t1 = clock()
        if not ok:
            break
        boxes, scores, lms = detector.detect(frame)
        t2 = clock()
        probs = classifier.classify(frame, boxes, lms)
        t3 = clock()
        c3 = time.process_time()
        if warm < args.warmup:
            warm += 1
            i += 1
            start = clock()
            continue
        t_decode.append((t1 - t0) * 1e3)
        t_detect.append((t2 - t1) * 1e3)
        t_classify.append((t3 - t2) * 1e3)
        t_frame.append((t3 - t0) * 1e3)
        t_cpu.append((c3 - c0) * 1e3)
        n_faces += len(boxes)
        if faces_out:
            faces_out.write(json.dumps({
                "frame": i,
                "boxes": [[round(float(v), 1) for v in b] for b in boxes],
                "scores": [round(float(s), 4) for s in scores],
                "expressions": [int(p.argmax()) for p in probs],
            }) + "\n")
        i += 1
        counted += 1
    elapsed = clock() - start
    if faces_out:
        faces_out.close()
    if counted == 0:
        sys.exit(f"{args.clip}: no frame counted ({i} read, {args.warmup} of them warm-up)")

    result = {
        "tool": "peer",
        "frames": counted,
        "faces_per_frame": round(n_faces / counted, 4),
        "threads": args.threads,
        "frame_ms": stats(t_frame),
        "stages": {"decode": stats(t_decode), "detect": stats(t_detect), "classify": stats(t_classify)},
        "fps": round(counted / elapsed, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"peer: {counted} frames of {args.clip} (after {warm} warm-up), detector input {detector.w}x{detector.h}, threads {args.threads}, "
              f"onnxruntime {ort.__version__}, OpenCV {cv2.__version__}, NumPy {np.__version__}")
        print(f"faces per frame {result['faces_per_frame']:.3f}, {result['fps']:.1f} fps")
        print(f"{'stage':<10}{'median':>10}{'p95':>10}{'max':>10}  (ms)")
        for name, s in [("frame", result["frame_ms"]), *result["stages"].items(), ("frame cpu", stats(t_cpu))]:
            print(f"{name:<10}{s['median']:>10.3f}{s['p95']:>10.3f}{s['max']:>10.3f}")
        print("(frame cpu: CPU time of the whole process, all its threads, per frame; wall time is the rest)")


if __name__ == "__main__":
    main()
