#!/usr/bin/env python3
"""Measures eye-openness, mouth-opening and head-pose signals on a decoded
clip, frame by frame, and scores them against hand labels.

The pipeline is the one ferd's Rust side is to implement, written so that
each step can be re-implemented exactly:

1. frame: the .y4m's 4:2:0 planes to RGB with ferd's integer BT.601
   limited-range formula (src/frame.rs `yuv_to_rgb`, nearest chroma sample);
2. face box and five landmarks: models/retinaface-mnet025.onnx, letterboxed
   into 320x240 as src/vision/detector.rs does (score >= 0.7, NMS 0.4,
   best face);
3. face ROI (MediaPipe's recipe): a square of side 1.5 x max(box w, box h)
   centred on the box, rotated by theta = atan2(y1 - y0, x1 - x0) of the
   detector's two eye landmarks (image-left eye -> image-right eye), cropped
   to 192x192 by bilinear sampling, RGB / 255, NHWC;
   with --roi refine (the default) the mesh is run a second time on the ROI
   MediaPipe derives from landmarks: the axis-aligned box of the 468 points,
   side 1.5 x max(w, h), theta from point 33 to point 263;
4. the 468-point mesh (models/face-landmark.onnx): x, y in crop pixels
   (0..192) projected back through the ROI;
5. per eye, the iris model (models/iris-landmark.onnx) on a 64x64 crop:
   corners (33, 133) for the image-left eye, (362, 263) for the image-right
   eye, centre = midpoint, side = 2.3 x max(|dx|, |dy|), theta = atan2(dy, dx),
   the image-right eye's crop mirrored horizontally (and x' = 64 - x on the
   way out); RGB / 255, NHWC;
6. signals (see SIGNALS), mouth ratio, head pose.

Usage:
  tools/driver-state/measure.py --clip target/footage/wolfgang.y4m \
      --labels tests/data/driver/wolfgang.labels --csv /tmp/lm/wolfgang.csv
"""
import argparse
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))

# Eye-aspect-ratio points on the 468-point mesh (p1..p6 of Soukupova & Cech):
# corner, upper, upper, corner, lower, lower.
MESH_EAR = {"right": [33, 160, 158, 133, 153, 144], "left": [362, 385, 387, 263, 373, 380]}
# Iris-model eyes: (start corner, end corner, mirrored) as MediaPipe's
# iris_tracking graph feeds them (its "left eye" 33/133 is not mirrored, its
# "right eye" 362/263 is). Named here by the subject's side.
IRIS_EYES = {"right": (33, 133, False), "left": (362, 263, True)}
# The iris model's first 16 eye-contour points, in MediaPipe's
# update_face_landmarks_calculator.cc order: 0 = outer corner, 1..7 = lower
# lid from outer to inner, 8 = inner corner, 9..15 = upper lid from outer to
# inner. Mesh indices for the subject's right eye (33 ... 173); the left eye
# is the same with 263 ... 398 (the contour comes back un-mirrored).
CONTOUR_TO_MESH = {
    "right": [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173],
    "left": [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398],
}
LOWER = [1, 2, 3, 4, 5, 6, 7]
UPPER = [9, 10, 11, 12, 13, 14, 15]
def load_geometry(path):
    """models/face-geometry.toml (tomllib, Python >= 3.11): the canonical
    points, the solvePnP set, the Procrustes basis and weights."""
    import tomllib

    with open(path, "rb") as f:
        t = tomllib.load(f)
    pts = {int(k): v for k, v in t["points"].items()}
    return {"points": pts, "pnp": t["pose"]["pnp"],
            "basis": t["procrustes"]["landmarks"], "weights": t["procrustes"]["weights"]}


# ----------------------------------------------------------------------------
# frames


def read_y4m(path):
    """Yields (Y, U, V) uint8 planes of a 4:2:0 .y4m; returns the rate too."""
    f = open(path, "rb")
    hdr = f.readline().decode("ascii").split()
    assert hdr[0] == "YUV4MPEG2", "not a YUV4MPEG2 file"
    fields = {p[0]: p[1:] for p in hdr[1:]}
    w, h = int(fields["W"]), int(fields["H"])
    n, d = map(int, fields["F"].split(":"))
    assert fields.get("C", "420").startswith("420"), "measure.py reads 4:2:0 only"
    cw, ch = (w + 1) // 2, (h + 1) // 2
    size = w * h + 2 * cw * ch

    def frames():
        with f:
            while True:
                line = f.readline()
                if not line:
                    return
                buf = f.read(size)
                y = np.frombuffer(buf, np.uint8, w * h).reshape(h, w)
                u = np.frombuffer(buf, np.uint8, cw * ch, w * h).reshape(ch, cw)
                v = np.frombuffer(buf, np.uint8, cw * ch, w * h + cw * ch).reshape(ch, cw)
                yield y, u, v

    return frames(), (n, d), (w, h)


def yuv_to_rgb(y, u, v):
    """ferd's src/frame.rs yuv_to_rgb over a frame: BT.601 limited range,
    integer arithmetic, each chroma sample used for its 2x2 luma block."""
    h, w = y.shape
    U = np.repeat(np.repeat(u.astype(np.int32), 2, 0), 2, 1)[:h, :w] - 128
    V = np.repeat(np.repeat(v.astype(np.int32), 2, 0), 2, 1)[:h, :w] - 128
    c = np.maximum(y.astype(np.int32) - 16, 0) * 298

    def cl(x):
        return np.clip((x + 128) >> 8, 0, 255).astype(np.float32)

    return np.stack([cl(c + 409 * V), cl(c - 100 * U - 208 * V), cl(c + 516 * U)], -1)


def bilinear(img, sx, sy):
    """src/frame.rs rgb_bilinear: integer coordinates are pixel centres,
    positions clamped to the border."""
    h, w = img.shape[:2]
    sx = np.clip(sx, 0.0, w - 1.0)
    sy = np.clip(sy, 0.0, h - 1.0)
    x0 = np.floor(sx)
    y0 = np.floor(sy)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


# ----------------------------------------------------------------------------
# rotated square ROIs


class Roi:
    """A square of `side` pixels centred on (cx, cy), rotated by `theta`
    (radians, image axes: x right, y down; positive turns x towards y).
    Frame coordinates are continuous with pixel edges at integers (pixel k
    covers [k, k+1)), as ferd's detector decodes them."""

    def __init__(self, cx, cy, side, theta, mirror=False):
        self.cx, self.cy, self.side, self.theta, self.mirror = cx, cy, side, theta, mirror

    def crop(self, img, size):
        """size x size RGB crop: crop pixel (u, v) samples the frame at
        c + R(theta) * (s * ((u + 0.5) / size - 0.5), (v + 0.5) / size - 0.5) * side,
        s = -1 when mirrored, else 1; bilinear at (X - 0.5, Y - 0.5)."""
        g = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
        nu, nv = np.meshgrid(g, g)
        if self.mirror:
            nu = -nu
        X, Y = self.to_frame(nu, nv)
        return bilinear(img, X - 0.5, Y - 0.5)

    def to_frame(self, nu, nv):
        """Crop coordinates normalised to [-0.5, 0.5] (after un-mirroring)
        to frame coordinates."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = nu * self.side, nv * self.side
        return self.cx + c * dx - s * dy, self.cy + s * dx + c * dy

    def project(self, pts, size):
        """Model output points (x, y, z in crop pixels of a size x size
        input) to frame pixels; z scaled like x."""
        x = pts[:, 0] / size
        if self.mirror:
            x = 1.0 - x
        X, Y = self.to_frame(x - 0.5, pts[:, 1] / size - 0.5)
        return np.stack([X, Y, pts[:, 2] / size * self.side], -1)


def roi_from_points_rotated(p0, p1, xs, ys, scale):
    """Like roi_from_points, but the box is taken in the eye line's frame
    (ferd's roi_from_mesh), not in image axes."""
    theta = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    c, s = math.cos(theta), math.sin(theta)
    xs, ys = np.asarray(xs), np.asarray(ys)
    u = xs * c + ys * s
    v = -xs * s + ys * c
    mu, mv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    return Roi(mu * c - mv * s, mu * s + mv * c, scale * max(u.max() - u.min(), v.max() - v.min()), theta)


def roi_from_points(p0, p1, xs, ys, scale):
    """MediaPipe's DetectionsToRects + RectTransformation(square_long):
    centre of the axis-aligned box of (xs, ys), side = scale x its longer
    side, rotation = atan2 of the vector p0 -> p1 (target angle 0)."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    theta = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    return Roi((x0 + x1) / 2, (y0 + y1) / 2, scale * max(x1 - x0, y1 - y0), theta)


# ----------------------------------------------------------------------------
# models


class Runner:
    """One ONNX model on onnxruntime or tract (the Python bindings of the
    runtime ferd links), inputs as float32 arrays."""

    def __init__(self, path, backend, shape=None):
        self.backend = backend
        if backend == "onnxruntime":
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.input = self.sess.get_inputs()[0].name
        else:
            import tract

            # tract's Python API (0.23): load, type, optimise, make runnable
            m = tract.onnx().load(path)
            if shape is not None:  # free dimensions fixed, as ferd does
                m.set_input_fact(0, ",".join(map(str, shape)) + ",f32")
            self.sess = m.into_model().into_runnable()

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.backend == "onnxruntime":
            return self.sess.run(None, {self.input: x})
        return [o.to_numpy() for o in self.sess.run([x])]


class Detector:
    """models/retinaface-mnet025.onnx exactly as src/vision/detector.rs runs
    it: letterbox (scale to fit, pad right/bottom at the mean), BGR - mean,
    anchors for strides 8/16/32 and sizes [16,32]/[64,128]/[256,512],
    variances 0.1/0.2, score >= 0.7, NMS at IoU 0.4."""

    def __init__(self, path, backend, size=(320, 240), min_score=0.7, nms_iou=0.4):
        self.w, self.h = size
        self.run = Runner(path, backend, (1, 3, self.h, self.w))
        self.min_score, self.nms_iou = min_score, nms_iou
        anchors = []
        for stride, sizes in zip([8, 16, 32], [[16, 32], [64, 128], [256, 512]]):
            for y in range(-(-self.h // stride)):
                for x in range(-(-self.w // stride)):
                    for s in sizes:
                        anchors.append([(x + 0.5) * stride / self.w, (y + 0.5) * stride / self.h, s / self.w, s / self.h])
        self.anchors = np.array(anchors, np.float32)

    def __call__(self, rgb):
        fh, fw = rgb.shape[:2]
        scale = min(self.w / fw, self.h / fh)
        uw = min(max(int(round(fw * scale)), 1), self.w)
        uh = min(max(int(round(fh * scale)), 1), self.h)
        sx = (np.arange(uw) + 0.5) / scale - 0.5
        sy = (np.arange(uh) + 0.5) / scale - 0.5
        X, Y = np.meshgrid(sx, sy)
        patch = bilinear(rgb, X, Y)[..., ::-1] - np.array([104.0, 117.0, 127.0])
        x = np.zeros((1, 3, self.h, self.w), np.float32)
        x[0, :, :uh, :uw] = patch.transpose(2, 0, 1)
        outs = self.run(x)
        n = len(self.anchors)
        by_last = {o.shape[-1]: o.reshape(n, -1) for o in outs}
        loc, conf, lm = by_last[4], by_last[2], by_last[10]
        a = self.anchors
        keep = conf[:, 1] >= self.min_score
        faces = []
        for i in np.nonzero(keep)[0]:
            l = loc[i]
            cx = a[i, 0] + l[0] * 0.1 * a[i, 2]
            cy = a[i, 1] + l[1] * 0.1 * a[i, 3]
            bw = a[i, 2] * math.exp(l[2] * 0.2)
            bh = a[i, 3] * math.exp(l[3] * 0.2)
            box = np.array([(cx - bw / 2) * self.w, (cy - bh / 2) * self.h, bw * self.w, bh * self.h]) / scale
            pts = np.array(
                [[(a[i, 0] + lm[i, 2 * k] * 0.1 * a[i, 2]) * self.w, (a[i, 1] + lm[i, 2 * k + 1] * 0.1 * a[i, 3]) * self.h] for k in range(5)]
            ) / scale
            faces.append((float(conf[i, 1]), box, pts))
        faces.sort(key=lambda f: -f[0])
        kept = []
        for f in faces:
            if all(iou(f[1], k[1]) <= self.nms_iou for k in kept):
                kept.append(f)
        return kept


def iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class Mesh:
    """models/face-landmark.onnx: [1,192,192,3] RGB in [0,1] -> 468 x (x, y, z)
    in crop pixels, and a face-presence logit."""

    SIZE = 192

    def __init__(self, path, backend):
        self.run = Runner(path, backend)

    def __call__(self, rgb, roi):
        crop = roi.crop(rgb, self.SIZE)
        outs = self.run(crop[None] / 255.0)
        by_size = {o.size: o for o in outs}
        pts = by_size[1404].reshape(468, 3)
        presence = 1.0 / (1.0 + math.exp(-float(by_size[1].reshape(-1)[0])))
        return roi.project(pts, self.SIZE), presence, crop


class Iris:
    """models/iris-landmark.onnx: [1,64,64,3] RGB in [0,1] -> 71 eye-contour
    points and 5 iris points, (x, y, z) in crop pixels."""

    SIZE = 64

    def __init__(self, path, backend):
        self.run = Runner(path, backend)

    def roi(self, mesh, start, end, mirror):
        p0, p1 = mesh[start, :2], mesh[end, :2]
        r = roi_from_points(p0, p1, [p0[0], p1[0]], [p0[1], p1[1]], 2.3)
        r.mirror = mirror
        return r

    def __call__(self, rgb, roi):
        crop = roi.crop(rgb, self.SIZE)
        outs = self.run(crop[None] / 255.0)
        by_size = {o.size: o for o in outs}
        contour = by_size[213].reshape(71, 3)
        iris = by_size[15].reshape(5, 3)
        return roi.project(contour, self.SIZE), roi.project(iris, self.SIZE), contour, crop


# ----------------------------------------------------------------------------
# signals


def dist(a, b):
    return float(np.hypot(*(a[:2] - b[:2])))


def ear6(p):
    """Soukupova & Cech: (|p2-p6| + |p3-p5|) / (2 |p1-p4|)."""
    return (dist(p[1], p[5]) + dist(p[2], p[4])) / (2.0 * dist(p[0], p[3]))


def contour_signals(c, raw):
    """Openness from the iris model's eye contour `c` (frame pixels) and
    `raw` (the same points in the model's 64x64 crop, un-mirrored x)."""
    width = dist(c[0], c[8])
    gaps = [dist(c[u], c[l]) for u, l in zip(UPPER, LOWER)]
    # signed vertical gap in the eye-aligned crop (lower lid y - upper lid y):
    # goes negative instead of bouncing off zero when the lids cross.
    sgaps = [raw[l, 1] - raw[u, 1] for u, l in zip(UPPER, LOWER)]
    wraw = math.hypot(*(raw[0, :2] - raw[8, :2]))
    poly = np.array([c[i, :2] for i in [0] + LOWER + [8] + UPPER[::-1]])
    area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1)))
    return {
        "iris_ear": (dist(c[11], c[3]) + dist(c[13], c[5])) / (2.0 * width),
        "iris_gap3": float(np.mean(gaps[2:5])) / width,
        "iris_gap7": float(np.mean(gaps)) / width,
        "iris_gapmax": float(np.max(gaps)) / width,
        "iris_sgap3": float(np.mean(sgaps[2:5])) / wraw,
        "iris_sgap7": float(np.mean(sgaps)) / wraw,
        "iris_area": area / width**2,
    }


def pose_angles(R):
    """yaw, pitch, roll in degrees from a rotation (canonical face -> camera,
    camera axes x right, y down, z away). R[:, 2] is the canonical -z axis
    (into the head); the nose points along -R[:, 2]. yaw > 0: nose towards
    the image's right (the subject's left); pitch > 0: nose down; roll > 0:
    the face's x axis turned clockwise in the image."""
    f = R[:, 2]
    yaw = math.degrees(math.atan2(-f[0], f[2]))
    pitch = math.degrees(math.atan2(-f[1], math.hypot(f[0], f[2])))
    roll = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    return yaw, pitch, roll


def head_pose_procrustes(mesh, geometry):
    """MediaPipe-style weighted orthogonal Procrustes: rotation of the
    canonical basis points (camera frame: x, -y, -z) onto the mesh's
    (x, y, z) in frame pixels (orthographic; the mesh's z is in x's scale).
    R = U diag(1, 1, det(U V^T)) V^T from the SVD of
    sum_i w_i (b_i - mean_b)(a_i - mean_a)^T, weighted means."""
    pts = geometry["points"]
    idx = geometry["basis"]
    w = np.asarray(geometry["weights"], np.float64)
    w = w / w.sum()
    A = np.array([[pts[i][0], -pts[i][1], -pts[i][2]] for i in idx], np.float64)
    B = np.array([mesh[i] for i in idx], np.float64)
    A0 = A - w @ A
    B0 = B - w @ B
    U, _, Vt = np.linalg.svd((B0 * w[:, None]).T @ A0)
    d = np.sign(np.linalg.det(U @ Vt))
    return pose_angles(U @ np.diag([1.0, 1.0, d]) @ Vt)


def head_pose_affine(mesh, geometry):
    """yaw, pitch (degrees) by a scaled-orthographic least-squares fit of
    the [pose] pnp points, as ferd's src/vision/landmarks.rs `head_pose`
    does: image points q = (x, -y) and canonical points r, both centred;
    M = (sum q r^T)(sum r r^T)^-1 (2x3); r1 = M0/|M0|, r2 = the part of M1
    orthogonal to r1, normalised; r3 = r1 x r2; yaw = atan2(r1.z, r3.z),
    pitch = atan2(r2.z, r3.z) (its signs: yaw > 0 face turned to the
    image's right, pitch > 0 tilted up)."""
    pts = geometry["points"]
    idx = geometry["pnp"]
    P = np.array([pts[i] for i in idx], np.float64)
    Q = np.array([[mesh[i, 0], -mesh[i, 1]] for i in idx], np.float64)
    P -= P.mean(0)
    Q -= Q.mean(0)
    M = (Q.T @ P) @ np.linalg.inv(P.T @ P)
    r1 = M[0] / np.linalg.norm(M[0])
    r2 = M[1] - (r1 @ M[1]) * r1
    r2 /= np.linalg.norm(r2)
    r3 = np.cross(r1, r2)
    return math.degrees(math.atan2(r1[2], r3[2])), math.degrees(math.atan2(r2[2], r3[2]))


def head_pose(mesh, geometry, frame_size):
    """yaw, pitch, roll (degrees) by solvePnP of the [pose] pnp points of
    models/face-geometry.toml on the mesh's 2-D points; pinhole camera with
    focal length = frame width, principal point at the centre."""
    import cv2

    pts = geometry["points"]
    idx = geometry["pnp"]
    obj = np.array([[pts[i][0], -pts[i][1], -pts[i][2]] for i in idx], np.float64)
    img = np.array([mesh[i, :2] for i in idx], np.float64)
    w, h = frame_size
    K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return float("nan"), float("nan"), float("nan")
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    R, _ = cv2.Rodrigues(rvec)
    return pose_angles(R)


# ----------------------------------------------------------------------------
# labels and scores


def read_labels(path, n):
    lab = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            name, a, b = line[0], int(line[1]), int(line[2])
            lab.setdefault(name, np.zeros(n, bool))[a : b + 1] = True
    z = np.zeros(n, bool)
    g = lambda k: lab.get(k, z)
    closed = (g("closed") | g("blink")) & ~g("partial") & ~g("hand")
    opened = g("open") & ~g("partial")
    return closed, opened, g("down"), lab


def auc(neg, pos):
    """P(pos > neg) + P(tie)/2: the chance an open frame scores above a
    closed one (Mann-Whitney)."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rp = ranks[len(neg) :].sum()
    return (rp - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def best_threshold(closed_v, open_v):
    """Threshold t (closed when v < t) maximising recall - false-closed rate."""
    cands = np.unique(np.concatenate([closed_v, open_v]))
    best = None
    for t in np.concatenate([cands, [cands[-1] + 1e-6]]):
        rec = np.mean(closed_v < t)
        fc = np.mean(open_v < t)
        if best is None or rec - fc > best[1] - best[2]:
            best = (t, rec, fc)
    return best


# ----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", required=True, help="decoded .y4m (tools/driver-state/fetch-footage.sh)")
    ap.add_argument("--labels", help="LABEL FIRST LAST lines (tests/data/driver/*.labels)")
    ap.add_argument("--models", default=os.path.join(REPO, "models"))
    ap.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tract"])
    ap.add_argument("--roi", default="refine", choices=["detector", "refine", "track"],
                    help="face ROI: from the detector only; detector then one pass on the landmarks' ROI (default); "
                    "the previous frame's landmarks (MediaPipe's tracking), detector on the first frame")
    ap.add_argument("--mesh-box", default="axis", choices=["axis", "rotated"],
                    help="ROI from landmarks: box in image axes (MediaPipe) or in the eye line's frame (ferd)")
    ap.add_argument("--csv", help="write per-frame signals here")
    ap.add_argument("--dump", help="save the first frames' model inputs (npz) here, for runtime comparisons")
    ap.add_argument("--check-tract", type=int, default=0, metavar="N",
                    help="also run the mesh and iris models in tract on every N-th frame; report max |diff|")
    args = ap.parse_args()

    frames, rate, size = read_y4m(args.clip)
    det = Detector(os.path.join(args.models, "retinaface-mnet025.onnx"), args.backend)
    mesh_m = Mesh(os.path.join(args.models, "face-landmark.onnx"), args.backend)
    iris_m = Iris(os.path.join(args.models, "iris-landmark.onnx"), args.backend)
    geometry = load_geometry(os.path.join(args.models, "face-geometry.toml"))
    if args.check_tract:
        t_mesh = Runner(os.path.join(args.models, "face-landmark.onnx"), "tract")
        t_iris = Runner(os.path.join(args.models, "iris-landmark.onnx"), "tract")
        diffs = {"mesh": 0.0, "presence": 0.0, "contour": 0.0, "iris": 0.0}

    from_mesh = roi_from_points if args.mesh_box == "axis" else roi_from_points_rotated
    rows = []
    dump = {"mesh": [], "iris": []}
    prev = None
    for fi, (y, u, v) in enumerate(frames):
        rgb = yuv_to_rgb(y, u, v)
        row = {"frame": fi, "t": fi * rate[1] / rate[0]}
        if args.roi == "track" and prev is not None:
            roi = from_mesh(prev[33], prev[263], prev[:, 0], prev[:, 1], 1.5)
        else:
            faces = det(rgb)
            if not faces:
                rows.append(row)
                prev = None
                continue
            score, box, pts = faces[0]
            row["det_score"] = score
            roi = Roi(box[0] + box[2] / 2, box[1] + box[3] / 2, 1.5 * max(box[2], box[3]),
                      math.atan2(pts[1, 1] - pts[0, 1], pts[1, 0] - pts[0, 0]))
        mesh, presence, crop = mesh_m(rgb, roi)
        if args.roi == "refine":
            roi = from_mesh(mesh[33], mesh[263], mesh[:, 0], mesh[:, 1], 1.5)
            mesh, presence, crop = mesh_m(rgb, roi)
        prev = mesh
        row.update(presence=presence, roi_cx=roi.cx, roi_cy=roi.cy, roi_side=roi.side, roi_theta=math.degrees(roi.theta))
        if args.dump and fi % 10 == 0:
            dump["mesh"].append(crop / 255.0)
        if args.check_tract and fi % args.check_tract == 0:
            o = {x.size: x for x in mesh_m.run(crop[None] / 255.0)}
            t = {x.size: x for x in t_mesh(crop[None] / 255.0)}
            diffs["mesh"] = max(diffs["mesh"], float(np.abs(o[1404] - t[1404]).max()))
            diffs["presence"] = max(diffs["presence"], float(np.abs(o[1] - t[1]).max()))
        for eye in ("right", "left"):
            p = np.array([mesh[i] for i in MESH_EAR[eye]])
            row[f"mesh_ear_{eye}"] = ear6(p)
            start, end, mirror = IRIS_EYES[eye]
            eroi = iris_m.roi(mesh, start, end, mirror)
            contour, iris, raw, ecrop = iris_m(rgb, eroi)
            raw = raw.copy()
            if mirror:
                raw[:, 0] = 64.0 - raw[:, 0]
            for k, val in contour_signals(contour, raw).items():
                row[f"{k}_{eye}"] = val
            # the contour's lid points against the mesh's own (mapping check)
            row[f"contour_vs_mesh_{eye}"] = float(np.mean([dist(contour[k], mesh[m]) for k, m in enumerate(CONTOUR_TO_MESH[eye])]))
            row[f"eye_width_{eye}"] = dist(contour[0], contour[8])
            if args.dump and fi % 10 == 0:
                dump["iris"].append(ecrop / 255.0)
            if args.check_tract and fi % args.check_tract == 0:
                o = {x.size: x for x in iris_m.run(ecrop[None] / 255.0)}
                t = {x.size: x for x in t_iris(ecrop[None] / 255.0)}
                diffs["contour"] = max(diffs["contour"], float(np.abs(o[213] - t[213]).max()))
                diffs["iris"] = max(diffs["iris"], float(np.abs(o[15] - t[15]).max()))
        row["mouth"] = dist(mesh[13], mesh[14]) / dist(mesh[61], mesh[291])
        row["yaw"], row["pitch"], row["roll"] = head_pose(mesh, geometry, size)
        row["yaw_p"], row["pitch_p"], row["roll_p"] = head_pose_procrustes(mesh, geometry)
        row["yaw_a"], row["pitch_a"] = head_pose_affine(mesh, geometry)
        rows.append(row)

    if args.dump:
        np.savez_compressed(args.dump, mesh=np.array(dump["mesh"], np.float32), iris=np.array(dump["iris"], np.float32))
    if args.check_tract:
        print("tract vs onnxruntime, max |diff| on the same inputs (every %d-th frame): %s" % (
            args.check_tract, ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())))

    # per-eye signals averaged over both eyes
    names = sorted({k.rsplit("_", 1)[0] for r in rows for k in r if k.endswith("_right")})
    for r in rows:
        for s in names:
            if f"{s}_right" in r:
                r[s] = (r[f"{s}_right"] + r[f"{s}_left"]) / 2
    cols = ["frame", "t", "det_score", "presence", "roi_cx", "roi_cy", "roi_side", "roi_theta"]
    cols += [c for c in rows[0 if "presence" in rows[0] else -1] if c not in cols]
    cols += [s for s in names if s not in cols]
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(",".join(cols) + "\n")
            for r in rows:
                f.write(",".join("" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])) for c in cols) + "\n")
        print(f"per-frame signals: {args.csv}")

    n = len(rows)
    missing = [r["frame"] for r in rows if "presence" not in r]
    print(f"{n} frames, {len(missing)} without a face{': ' + str(missing[:20]) if missing else ''}; "
          f"ROI {args.roi}, backend {args.backend}")
    if not args.labels:
        return
    closed, opened, down, lab = read_labels(args.labels, n)
    have = np.array(["presence" in r for r in rows])
    closed &= have
    opened &= have
    down &= have
    print(f"labelled frames: closed {closed.sum()}, open {opened.sum()}, down {down.sum()}")
    print()
    partial = lab.get("partial", np.zeros(n, bool)) & have
    window = ((lab.get("blink-window", np.zeros(n, bool)) | lab.get("closed", np.zeros(n, bool)))
              & ~lab.get("hand", np.zeros(n, bool)) & ~lab.get("partial", np.zeros(n, bool)) & have)
    print("Signals are the mean of both eyes; normalised = signal / its median over the open frames;")
    print("the threshold (closed when below) maximises closed recall - false-closed rate.")
    print("'AUC windows' scores every frame of the notes' blink windows as closed.")
    print()
    print("| signal | median closed / open / down | AUC | AUC right / left | AUC windows "
          "| normalised closed max / open min | threshold | closed recall | false closed | partial / down read closed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in [x for x in names if not x.startswith(("contour_vs", "eye_width"))]:
        val = np.array([r.get(s, np.nan) for r in rows])
        vr = np.array([r.get(s + "_right", np.nan) for r in rows])
        vl = np.array([r.get(s + "_left", np.nan) for r in rows])
        base = np.median(val[opened])
        norm = val / base
        a = auc(val[closed], val[opened])
        aw = f"{auc(val[window], val[opened]):.4f}" if lab.get("blink-window") is not None else "-"
        t, rec, fc = best_threshold(norm[closed], norm[opened])
        if norm[closed].max() < norm[opened].min():
            t = (norm[closed].max() + norm[opened].min()) / 2  # middle of the gap
        frac = lambda m: f"{np.mean(norm[m] < t):.2f}" if m.any() else "-"
        pd = f"{frac(partial)} / {frac(down)}"
        dmed = f"{np.median(val[down]):.3f}" if down.any() else "-"
        print(f"| {s} | {np.median(val[closed]):.3f} / {base:.3f} / {dmed} "
              f"| **{a:.4f}** | {auc(vr[closed], vr[opened]):.4f} / {auc(vl[closed], vl[opened]):.4f} | {aw} "
              f"| {norm[closed].max():.3f} / {norm[opened].min():.3f} | < {t:.3f} | {rec:.3f} | {fc:.3f} | {pd} |")
    for s in ("contour_vs_mesh", "eye_width"):
        val = np.array([r.get(s, np.nan) for r in rows])
        print(f"{s}: median {np.nanmedian(val):.2f} px (closed {np.median(val[closed]):.2f}, open {np.median(val[opened]):.2f})")
    mouth = np.array([r.get("mouth", np.nan) for r in rows])
    print()
    print("mouth ratio |13-14| / |61-291|: min %.3f, p5 %.3f, median %.3f, p95 %.3f, max %.3f (frame %d)" % (
        np.nanmin(mouth), np.nanpercentile(mouth, 5), np.nanmedian(mouth), np.nanpercentile(mouth, 95), np.nanmax(mouth), int(np.nanargmax(mouth))))
    for name, m in [("open", opened), ("closed", closed), ("down", down)]:
        if not m.any():
            continue
        print("  %-6s median %.3f, range %.3f-%.3f" % (name, np.median(mouth[m]), mouth[m].min(), mouth[m].max()))
    for title, sfx in [("solvePnP of the [pose] pnp points, focal = frame width", ""),
                       ("weighted Procrustes of the 33 [procrustes] points with the mesh's z, orthographic", "_p"),
                       ("ferd's affine fit of the pnp points (pitch > 0 = up)", "_a")]:
        print(f"head pose (deg; {title}): median [p5, p95]")
        for name, m in [("open", opened), ("closed", closed), ("down", down)]:
            if not m.any():
                continue
            parts = []
            for k in ("yaw", "pitch") + (("roll",) if sfx != "_a" else ()):
                v = np.array([r.get(k + sfx, np.nan) for r in rows])[m]
                parts.append(f"{k} {np.median(v):+.1f} [{np.percentile(v, 5):+.1f}, {np.percentile(v, 95):+.1f}]")
            print(f"  {name:6s} " + ", ".join(parts))


if __name__ == "__main__":
    main()
