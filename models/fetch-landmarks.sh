#!/usr/bin/env bash
# Fetches MediaPipe's face-mesh and iris models from the PyPI wheel
# mediapipe==0.10.21 (Apache-2.0), converts them from TFLite to ONNX with a
# pinned tf2onnx in a throw-away venv, checks the ONNX against the TFLite
# interpreter, and writes:
#
#   models/face-landmark.onnx  + face-landmark.toml   (468-point face mesh)
#   models/iris-landmark.onnx  + iris-landmark.toml   (eye contour + iris)
#   models/LICENSE.mediapipe                           (the wheel's licence)
#   models/face-geometry.toml  (canonical 3-D face points for head pose), only
#       when CANONICAL_OBJ names MediaPipe's canonical_face_model.obj: the
#       wheel does not ship it (see the manifest's provenance)
#
# Usage: models/fetch-landmarks.sh [PYTHON]   (run from the repository root)
#   PYTHON must be 3.9-3.11 (tensorflow-cpu 2.15.1 has no wheels for newer).
#   CONVERTER_VENV=DIR keeps the converter venv (about 1.4 GB) in DIR and
#   reuses it on the next run; by default it is made in a temp dir and removed.
#
# The ONNX bytes are reproducible: tf2onnx runs with PYTHONHASHSEED=0 and the
# graph's internal names (which tf2onnx numbers from run-time counters) are
# then renamed by position (and the temp path dropped from the graph's
# doc string); the weights and ops are tf2onnx's, untouched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
MP_VERSION=0.10.21
PLATFORM=manylinux_2_28_x86_64
PYVER=3.11
OPSET=13
# The converter and its checker, pinned.
CONVERTER_PKGS="tf2onnx==1.17.0 tensorflow-cpu==2.15.1 onnx==1.16.2 numpy==1.26.4 protobuf==4.25.9 onnxruntime==1.20.1"
CANONICAL_SHA256=8bac80443397e113f41a8b565ea72c59390bc031d9defab289dba7bc0c54e618

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))' ||
    { echo "$0: $PY is not Python 3.9-3.11 (tensorflow-cpu 2.15.1 needs one)" >&2; exit 1; }

"$PY" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform "$PLATFORM" --python-version "$PYVER" "mediapipe==$MP_VERSION" -d "$work"
wheel=$(ls "$work"/mediapipe-"$MP_VERSION"-*.whl)
wheel_name=$(basename "$wheel")
wheel_sha=$(sha256sum "$wheel" | cut -d' ' -f1)
FACE_PATH=mediapipe/modules/face_landmark/face_landmark.tflite
IRIS_PATH=mediapipe/modules/iris_landmark/iris_landmark.tflite
"$PY" - "$wheel" "$work" "$FACE_PATH" "$IRIS_PATH" <<'PY'
import os, sys, zipfile
wheel, work, *paths = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for p in paths:
        with open(os.path.join(work, os.path.basename(p)), "wb") as f:
            f.write(z.read(p))
    lic = [n for n in z.namelist() if n.endswith(".dist-info/LICENSE")]
    with open("models/LICENSE.mediapipe", "wb") as f:
        f.write(z.read(lic[0]))
PY
face_tflite_sha=$(sha256sum "$work/face_landmark.tflite" | cut -d' ' -f1)
iris_tflite_sha=$(sha256sum "$work/iris_landmark.tflite" | cut -d' ' -f1)

venv=${CONVERTER_VENV:-$work/venv}
if ! "$venv/bin/python" -c 'import tf2onnx, tensorflow, onnxruntime' 2>/dev/null; then
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $CONVERTER_PKGS
fi
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES=
for m in face_landmark iris_landmark; do
    "$venv/bin/python" -m tf2onnx.convert --tflite "$work/$m.tflite" \
        --output "$work/$m.raw.onnx" --opset "$OPSET" >"$work/$m.log" 2>&1 ||
        { cat "$work/$m.log" >&2; exit 1; }
done
# Rename by position, then check against the TFLite interpreter.
"$venv/bin/python" - "$work" <<'PY'
import os, sys
import numpy as np, onnx, onnxruntime as ort, tensorflow as tf

work = sys.argv[1]
out = {"face_landmark": "models/face-landmark.onnx", "iris_landmark": "models/iris-landmark.onnx"}
for m, dst in out.items():
    model = onnx.load(os.path.join(work, m + ".raw.onnx"))
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    inits = {i.name for i in g.initializer}
    ren = {}
    def name(old, prefix):
        if old == "" or old in keep:
            return old
        if old not in ren:
            ren[old] = f"{prefix}{len(ren)}"
        return ren[old]
    for k, n in enumerate(g.node):
        n.input[:] = [name(x, "w" if x in inits else "t") for x in n.input]
        n.output[:] = [name(x, "t") for x in n.output]
        n.name = f"n{k}_{n.op_type}"
    assert all(i.name in ren for i in g.initializer), "unused initializer"
    ordered = sorted(g.initializer, key=lambda i: int(ren[i.name][1:]))
    for i in ordered:
        i.name = ren[i.name]
    del g.initializer[:]
    g.initializer.extend(ordered)
    del g.value_info[:]
    g.doc_string = f"converted from {m}.tflite"  # tf2onnx writes the temp dir's path here
    onnx.checker.check_model(model)
    onnx.save(model, dst)

    interp = tf.lite.Interpreter(os.path.join(work, m + ".tflite"))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    sess = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(8):
        x = rng.random(tuple(inp["shape"]), dtype=np.float32)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        ref = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
        for k, v in ref.items():
            worst = max(worst, float(np.abs(v - got[k].reshape(v.shape)).max()))
    print(f"{dst}: onnxruntime vs TFLite on 8 random inputs, max |diff| {worst:.2e}")
    if worst > 1e-3:
        sys.exit(f"{dst}: does not match the TFLite model")
PY

converter="tf2onnx 1.17.0 (--tflite, --opset $OPSET) with tensorflow-cpu 2.15.1, onnx 1.16.2; internal tensor and node names renamed by position"
face_sha=$(sha256sum models/face-landmark.onnx | cut -d' ' -f1)
iris_sha=$(sha256sum models/iris-landmark.onnx | cut -d' ' -f1)

cat > models/face-landmark.toml <<TOML
# Face mesh: MediaPipe's 468-point face landmark model (the plain one, not
# the "attention" 478-point model, which needs a custom TFLite op).
# Produced by models/fetch-landmarks.sh from the PyPI wheel mediapipe==$MP_VERSION.

[model]
name = "mediapipe-face-landmark"
file = "face-landmark.onnx"
task = "face-landmarks"
sha256 = "$face_sha"
licence = "Apache-2.0 (MediaPipe, Copyright The MediaPipe Authors; see LICENSE.mediapipe). Model card: https://storage.googleapis.com/mediapipe-assets/Model%20Card%20MediaPipe%20Face%20Mesh.pdf"
provenance = "$FACE_PATH (sha256 $face_tflite_sha) from the PyPI wheel $wheel_name (sha256 $wheel_sha), converted to ONNX opset $OPSET by $converter"

[input]
# One face crop, NHWC (the converted graph keeps TFLite's layout and
# transposes inside): RGB, x = pixel / 255 (range [0, 1]).
# The crop is MediaPipe's ROI: a square of side 1.5 x max(w, h) of the face
# box (or of the box around the previous frame's 468 points), centred on it,
# rotated so the eyes are level (theta = atan2(dy, dx) of eye -> eye, from
# the detector's eye landmarks or mesh points 33 -> 263), sampled bilinearly
# to 192x192 with the border replicated.
shape = [1, 192, 192, 3]
layout = "NHWC"
color = "rgb"
scale = 0.00392156862745098
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
# "conv2d_21" [1,1,1,1404]: 468 points x (x, y, z); x, y in crop pixels
#   (0..192, origin at the crop's top-left corner), z in the same scale,
#   relative depth (smaller = nearer the camera). Back to the frame:
#   p = centre + R(theta) * ((x / 192 - 0.5) * side, (y / 192 - 0.5) * side).
# "conv2d_31" [1,1,1,1]: face-presence logit; sigmoid > 0.5 = a face
#   (MediaPipe drops the landmarks below).
kind = "face-mesh-468"
landmarks = 468
presence = "sigmoid"
TOML

cat > models/iris-landmark.toml <<TOML
# Eye contour and iris: MediaPipe's iris landmark model.
# Produced by models/fetch-landmarks.sh from the PyPI wheel mediapipe==$MP_VERSION.

[model]
name = "mediapipe-iris-landmark"
file = "iris-landmark.onnx"
task = "iris-landmarks"
sha256 = "$iris_sha"
licence = "Apache-2.0 (MediaPipe, Copyright The MediaPipe Authors; see LICENSE.mediapipe). Model card: https://storage.googleapis.com/mediapipe-assets/Model%20Card%20MediaPipe%20Iris.pdf"
provenance = "$IRIS_PATH (sha256 $iris_tflite_sha) from the PyPI wheel $wheel_name (sha256 $wheel_sha), converted to ONNX opset $OPSET by $converter"

[input]
# One eye crop, NHWC, RGB, x = pixel / 255 (range [0, 1]). MediaPipe's
# recipe (modules/iris_landmark/iris_landmark_landmarks_to_roi.pbtxt and
# iris_landmark_left_and_right_cpu.pbtxt): from the mesh's eye corners
# p0 -> p1 = (33 -> 133) for the subject's right eye (image left) and
# (362 -> 263) for the subject's left eye: centre = (p0 + p1) / 2,
# side = 2.3 x max(|dx|, |dy|), theta = atan2(dy, dx), a 64x64 bilinear
# crop; the subject's left eye (362/263) is mirrored horizontally, so the
# model always sees the outer corner on the left.
shape = [1, 64, 64, 3]
layout = "NHWC"
color = "rgb"
scale = 0.00392156862745098
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
# "output_eyes_contours_and_brows" [1,213]: 71 points x (x, y, z) in crop
#   pixels (0..64). Points 0-15 are the eye opening: 0 outer corner, 1-7
#   lower lid outer -> inner, 8 inner corner, 9-15 upper lid outer -> inner
#   (mesh 33,7,163,144,145,153,154,155,133,246,161,160,159,158,157,173 for
#   the right eye; 263,249,390,373,374,380,381,382,362,466,388,387,386,385,
#   384,398 for the left); 16-70 are halos around the eye and the brow.
# "output_iris" [1,15]: 5 points x (x, y, z): iris centre, then 4 points on
#   its edge.
# For a mirrored crop first x' = 64 - x. Back to the frame:
#   p = centre + R(theta) * ((x' / 64 - 0.5) * side, (y / 64 - 0.5) * side).
kind = "iris-landmark"
contour_points = 71
iris_points = 5
TOML
echo "models/face-landmark.toml written (sha256 $face_sha)"
echo "models/iris-landmark.toml written (sha256 $iris_sha)"

if [ -n "${CANONICAL_OBJ:-}" ]; then
    echo "$CANONICAL_SHA256  $CANONICAL_OBJ" | sha256sum --check --quiet ||
        { echo "$0: $CANONICAL_OBJ is not MediaPipe v0.10.21's canonical_face_model.obj" >&2; exit 1; }
    "$PY" - "$CANONICAL_OBJ" "$CANONICAL_SHA256" > models/face-geometry.toml <<'PY'
import sys
obj, sha = sys.argv[1:3]
v = [list(map(float, l.split()[1:4])) for l in open(obj) if l.startswith("v ")]
assert len(v) == 468, len(v)
# Head-pose points: nose tip, nose bottom, nose bridge, forehead, chin,
# chin top, outer and inner eye corners, mouth corners, upper/lower inner lip,
# face sides at the ears.
pose = [1, 4, 6, 10, 13, 14, 33, 61, 133, 152, 199, 234, 263, 291, 362, 454]
pnp = [1, 10, 33, 61, 152, 263, 291, 234, 454]
# MediaPipe's geometry pipeline: weighted Procrustes basis
# (modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt).
basis = [(4, 0.070909939706326), (6, 0.032100144773722), (10, 0.008446550928056),
         (33, 0.058724168688059), (54, 0.007667080033571), (67, 0.009078059345484),
         (117, 0.009791937656701), (119, 0.014565368182957), (121, 0.018591361120343),
         (127, 0.005197994410992), (129, 0.120625205338001), (132, 0.005560018587857),
         (133, 0.05328618362546), (136, 0.066890455782413), (143, 0.014816547743976),
         (147, 0.014262833632529), (198, 0.025462191551924), (205, 0.047252278774977),
         (263, 0.058724168688059), (284, 0.007667080033571), (297, 0.009078059345484),
         (346, 0.009791937656701), (348, 0.014565368182957), (350, 0.018591361120343),
         (356, 0.005197994410992), (358, 0.120625205338001), (361, 0.005560018587857),
         (362, 0.05328618362546), (365, 0.066890455782413), (372, 0.014816547743976),
         (376, 0.014262833632529), (420, 0.025462191551924), (425, 0.047252278774977)]
print(f"""# MediaPipe's canonical face model: 3-D points of the 468-point mesh's
# neutral face, for head pose. Units: centimetres; x towards the subject's
# left (the image's right for a frontal face), y up, z out of the face
# (towards the camera). For OpenCV's camera frame use (x, -y, -z).
# Written by models/fetch-landmarks.sh with CANONICAL_OBJ set; the wheel
# mediapipe==0.10.21 does not ship the .obj, so it is taken from MediaPipe's
# source at the same version.

[model]
name = "mediapipe-canonical-face"
task = "face-geometry"
licence = "Apache-2.0 (MediaPipe, Copyright The MediaPipe Authors; see LICENSE.mediapipe)"
provenance = "vertex coordinates copied from mediapipe/modules/face_geometry/data/canonical_face_model.obj (sha256 {sha}) of https://github.com/google-ai-edge/mediapipe at tag v0.10.21 (commit cad7f3ab99ebf175947e40c5252c642612aae927); vertex k (0-based) is mesh point k; Procrustes weights from geometry_pipeline_metadata_landmarks.pbtxt at the same tag"

[pose]
# A set for solvePnP-style fits (nose tip, forehead, outer eye corners,
# mouth corners, chin, face sides).
pnp = {pnp}

[procrustes]
# MediaPipe's weighted Procrustes basis for the face-to-canonical fit.
landmarks = {[i for i, _ in basis]}
weights = {[w for _, w in basis]}

[points]
# mesh index = [x, y, z]""")
for i in sorted(set(pose) | {i for i, _ in basis}):
    x, y, z = v[i]
    print(f"{i} = [{x:.6f}, {y:.6f}, {z:.6f}]")
PY
    echo "models/face-geometry.toml written"
fi
