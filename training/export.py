"""Export a trained checkpoint to ONNX for ferd, verify it, and write its manifest.

Example::

    python training/export.py --run training/runs/quick \
        --onnx models/expression-quick.onnx --name ferd-expression-quick

Steps:

1. load ``<run>/best.pt`` (or ``--checkpoint``), rebuild the model in eval mode;
2. export ONNX opset 13 with the legacy TorchScript exporter
   (``torch.onnx.export(..., dynamo=False)``), fixed batch 1: input ``input``
   ``[1,1,48,48]`` float32, output ``logits`` ``[1,7]`` (no softmax). BatchNorm
   is folded into the convolutions by constant folding;
3. check the graph with ``onnx.checker`` and compare onnxruntime against PyTorch
   on ``--compare`` val images (max abs diff of the logits, argmax agreement);
4. measure the val accuracy with onnxruntime on the whole val split (3,589
   images for FER2013 PublicTest), one image at a time as ferd runs it;
5. write ``<model>.toml`` next to ``<model>.onnx`` (schema in training/README.md)
   with the file's sha256, the preprocessing contract and the metrics.

Exits non-zero if the ONNX model disagrees with PyTorch (``--tolerance``).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import sys
import time
import tomllib
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from model import INPUT_SHAPE, PREPROCESS, build_model, count_macs, count_params  # noqa: E402

OPSET = 13
LICENCE = ("MIT OR Apache-2.0 (model weights: ferd's own model, trained here); trained on FER2013, "
           "whose terms allow research use only: check them before other use")


def normalize(x_u8: np.ndarray) -> np.ndarray:
    """uint8 [N,48,48] -> float32 [N,1,48,48] per the preprocessing contract."""
    x = x_u8.astype(np.float32)[:, None] * np.float32(PREPROCESS["scale"])
    return (x - np.float32(PREPROCESS["mean"])) / np.float32(PREPROCESS["std"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string (ASCII, \uXXXX escapes) is a valid TOML basic string


def provenance(ckpt: dict, n_train: int, n_val: int) -> str:
    a = ckpt["args"]
    runs = ckpt.get("argv_history", [ckpt.get("argv", [])])
    cmd = " then ".join("`" + " ".join(["python training/train.py", *r]) + "`" for r in runs)
    return (f"trained with {cmd} (FerNet width {ckpt['model_config']['width']}, "
            f"{a['schedule']} AdamW lr {a['lr']}, batch {a['batch_size']}, label smoothing {a['label_smoothing']}, "
            f"class-weight power {a['class_weight_power']}) for {ckpt['epoch']} of {a['epochs']} epochs on FER2013 "
            f"Training ({n_train} images); best epoch {ckpt['best_epoch']} chosen on PublicTest/val ({n_val} images); "
            f"exported by `python training/export.py` (ONNX opset {OPSET}, torch {torch.__version__}) "
            f"on {time.strftime('%Y-%m-%d')}")


MANIFEST_HEADER = """# Facial-expression classifier (FerNet, training/model.py), 7 logits, no softmax.
# Produced by training/export.py from a checkpoint of training/train.py."""


def write_manifest(path: Path, *, name: str, onnx_file: Path, sha: str, prov: str, val_acc: float,
                   params: int, macs: int, header: str = MANIFEST_HEADER) -> None:
    labels = ", ".join(toml_str(s) for s in fer_data.LABELS)
    text = f"""{header}

[model]
name = {toml_str(name)}
file = {toml_str(onnx_file.name)}
task = "expression"
sha256 = "{sha}"
licence = {toml_str(LICENCE)}
provenance = {toml_str(prov)}

[input]
shape = [{", ".join(str(d) for d in INPUT_SHAPE)}]
layout = "NCHW"
color = "grey"
scale = {PREPROCESS['scale']!r}
mean = [{PREPROCESS['mean']!r}]
std = [{PREPROCESS['std']!r}]

[output]
# softmax in the runtime; order = FER2013 label order
kind = "logits"
labels = [{labels}]

[metrics]
val_accuracy = {val_acc:.4f}
params = {params}
macs = {macs}
"""
    tomllib.loads(text)  # must parse
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="export a checkpoint to ONNX + TOML manifest",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--run", type=Path, help="run dir (uses <run>/best.pt)")
    ap.add_argument("--checkpoint", type=Path, help="checkpoint file (instead of --run)")
    ap.add_argument("--onnx", type=Path, required=True, help="output .onnx (manifest: same name, .toml)")
    ap.add_argument("--manifest", type=Path,
                    help="manifest to write (default: the .onnx path with .toml; ferd loads models/expression.toml)")
    ap.add_argument("--name", required=True, help="model name in the manifest, e.g. ferd-expression-quick")
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA)
    ap.add_argument("--format", default="auto", choices=["auto", *fer_data.READERS])
    ap.add_argument("--compare", type=int, default=500, help="val images for the PyTorch/ORT comparison")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit diff allowed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import onnx
    import onnxruntime as ort

    ckpt_path = args.checkpoint or (args.run / "best.pt" if args.run else None)
    if ckpt_path is None:
        ap.error("give --run or --checkpoint")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    params, macs = count_params(model), count_macs(model)
    print(f"[export] {ckpt_path}: epoch {ckpt['epoch']}, val acc at training {ckpt['val_acc']:.4f}; "
          f"params {params:,} MACs {macs:,}")

    # ---- export ----
    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    tmp_onnx = args.onnx.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose (clean opset-13 graph)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(INPUT_SHAPE),), str(tmp_onnx), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True,
                          export_params=True)
    m = onnx.load(str(tmp_onnx))
    onnx.checker.check_model(m, full_check=True)
    ops = sorted({n.op_type for n in m.graph.node})
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*m.graph.input, *m.graph.output)}
    print(f"[export] ONNX opset {m.opset_import[0].version}, ops {ops}, io {shapes}")
    assert shapes == {"input": list(INPUT_SHAPE), "logits": [1, 7]}, shapes
    os.replace(tmp_onnx, args.onnx)

    # ---- verify against PyTorch and measure val accuracy with onnxruntime ----
    xva, yva = fer_data.load_split(args.data, "val", args.format)
    xv = normalize(xva)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(args.onnx), so, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    ort_logits = np.concatenate([sess.run(["logits"], {"input": xv[i:i + 1]})[0] for i in range(len(xv))])
    ort_s = time.perf_counter() - t0
    with torch.no_grad():
        pt_logits = torch.cat([model(torch.from_numpy(xv[i:i + 512])) for i in range(0, len(xv), 512)]).numpy()
    rng = np.random.default_rng(0)
    sub = rng.choice(len(xv), size=min(args.compare, len(xv)), replace=False)
    diff = float(np.abs(ort_logits[sub] - pt_logits[sub]).max())
    agree = float((ort_logits[sub].argmax(1) == pt_logits[sub].argmax(1)).mean())
    agree_all = float((ort_logits.argmax(1) == pt_logits.argmax(1)).mean())
    pt_acc = float((pt_logits.argmax(1) == yva).mean())
    ort_acc = float((ort_logits.argmax(1) == yva).mean())
    print(f"[verify] {len(sub)} val images: max abs logit diff ORT vs PyTorch {diff:.3e}, "
          f"argmax agreement {agree * 100:.2f}% (all {len(xv)}: {agree_all * 100:.2f}%)")
    print(f"[verify] val accuracy ({len(yva)} images): PyTorch {pt_acc:.4f}, onnxruntime {ort_acc:.4f} "
          f"({ort_s / len(xv) * 1e3:.2f} ms/image, batch 1, {args.threads} thread)")
    if diff > args.tolerance or agree < 1.0:
        print(f"[verify] FAILED: diff {diff} > {args.tolerance} or argmax disagreement", file=sys.stderr)
        return 1

    # ---- manifest ----
    n_train = len(fer_data.load_split(args.data, "train", args.format, verbose=False)[1])
    sha = sha256_file(args.onnx)
    manifest = args.manifest or args.onnx.with_suffix(".toml")
    if manifest.resolve().parent != args.onnx.resolve().parent:
        ap.error("--manifest must be in the same folder as --onnx (the manifest names the file relative to itself)")
    write_manifest(manifest, name=args.name, onnx_file=args.onnx, sha=sha,
                   prov=provenance(ckpt, n_train, len(yva)), val_acc=ort_acc, params=params, macs=macs)
    print(f"[export] wrote {args.onnx} ({args.onnx.stat().st_size:,} bytes, sha256 {sha}) and {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
