"""Post-training static int8 quantization of an exported expression model (ONNX QDQ).

Example (the quick model)::

    python training/quantize.py --onnx models/expression-quick.onnx \
        --out models/expression-quick-int8-qdq.onnx --manifest models/expression-quick-int8.toml \
        --name ferd-expression-quick-int8

    ./target/release/ferd eval --data ../shared/datasets/fer2013/val \
        --model models/expression-quick-int8.toml --json

Steps:

1. calibrate on ``--calib`` training images (random, seeded; FER2013 Training,
   never val) with onnxruntime's ``quantize_static`` (MinMax by default);
2. write a QDQ graph (QuantizeLinear/DequantizeLinear pairs around Conv and
   Gemm; per-tensor activations, per-channel weights unless ``--per-tensor``).
   The model has no Softmax (tract's QDQ Softmax is broken, see
   ../shared/notes/models.md), so nothing needs excluding;
3. run the whole val split one image at a time with onnxruntime **with graph
   optimisations disabled** (``ORT_DISABLE_ALL``): that is the reference
   "simulated" quantization (float ops between Q/DQ pairs) which tract
   reproduces. The default-optimised onnxruntime session (its own x86 int8
   kernels, u8 x s8 saturation on AVX2 without VNNI) is reported alongside but
   is *not* the accuracy ferd sees;
4. compare against the fp32 model (argmax agreement, accuracy) and write the
   manifest (same schema as export.py; ``val_accuracy`` = the simulated-QDQ
   onnxruntime figure; params/MACs and the training provenance are copied
   from the fp32 model's manifest, ``--fp32-manifest``).

Measure what ferd really gets with ``ferd eval`` (tract); training/INT8.md has
the figures.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from export import normalize, sha256_file, write_manifest  # noqa: E402


HEADER = """# Facial-expression classifier (FerNet, training/model.py), 7 logits, no softmax; int8 QDQ ONNX
# (static post-training quantization) produced by training/quantize.py from an export.py model."""


def session(path: Path, threads: int, optimise: bool):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(sess, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits for every image, batch 1 (as ferd runs it); returns (logits, ms/image)."""
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    out = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return out, (time.perf_counter() - t0) / len(x) * 1e3


class CalibReader:
    """onnxruntime CalibrationDataReader over normalized images, batch 1."""

    def __init__(self, x: np.ndarray, input_name: str = "input"):
        self.x, self.name, self.i = x, input_name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="static int8 QDQ quantization of an expression ONNX model",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, help="fp32 model from export.py")
    ap.add_argument("--fp32-manifest", type=Path,
                    help="its manifest (params, MACs, provenance; default: --onnx with .toml, "
                         "else models/expression.toml if that names --onnx)")
    ap.add_argument("--out", type=Path, required=True, help="output QDQ .onnx")
    ap.add_argument("--manifest", type=Path, help="manifest to write (default: --out with .toml)")
    ap.add_argument("--name", required=True, help="model name in the manifest")
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA)
    ap.add_argument("--format", default="auto", choices=["auto", *fer_data.READERS])
    ap.add_argument("--calib", type=int, default=500, help="training images for calibration")
    ap.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    ap.add_argument("--act-type", default="quint8", choices=["quint8", "qint8"])
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights (for onnxruntime's x86 kernels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-x86-kernels", action="store_true",
                    help="skip the (informative only) pass with onnxruntime's own int8 kernels")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    xtr, _ = fer_data.load_split(args.data, "train", args.format)
    rng = np.random.default_rng(args.seed)
    calib = normalize(xtr[rng.choice(len(xtr), size=args.calib, replace=False)])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[args.method]
    t0 = time.perf_counter()
    quantize_static(str(args.onnx), str(args.out), CalibReader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if args.act_type == "quint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=not args.per_tensor,
                    reduce_range=args.reduce_range, calibrate_method=method)
    print(f"[quant] wrote {args.out} ({args.out.stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s: "
          f"{args.calib} calibration images, {args.method}, weights "
          f"{'per-tensor' if args.per_tensor else 'per-channel'} int8, activations {args.act_type}")

    # ---- verify ----
    xva, yva = fer_data.load_split(args.data, "val", args.format)
    xv = normalize(xva)
    fp, fp_ms = run_all(session(args.onnx, args.threads, True), xv)
    sim, sim_ms = run_all(session(args.out, args.threads, False), xv)
    opt, opt_ms = (None, 0.0) if args.no_x86_kernels else run_all(session(args.out, args.threads, True), xv)
    acc = lambda z: float((z.argmax(1) == yva).mean())  # noqa: E731
    agree = lambda a, b: float((a.argmax(1) == b.argmax(1)).mean())  # noqa: E731
    print(f"[verify] val {len(yva)} images, batch 1, {args.threads} thread(s):")
    print(f"[verify]   fp32 ORT                 acc {acc(fp):.4f}  {fp_ms:.2f} ms/image")
    print(f"[verify]   int8 ORT simulated (opt off) acc {acc(sim):.4f}  agreement with fp32 "
          f"{agree(sim, fp) * 100:.2f}%  max |logit diff| {np.abs(sim - fp).max():.3f}  {sim_ms:.2f} ms/image")
    if opt is not None:
        print(f"[verify]   int8 ORT x86 kernels (opt on) acc {acc(opt):.4f}  agreement with simulated "
              f"{agree(opt, sim) * 100:.2f}%  {opt_ms:.2f} ms/image")

    # ---- manifest ----
    fp_manifest = args.fp32_manifest or args.onnx.with_suffix(".toml")
    if not fp_manifest.is_file():
        alt = args.onnx.parent / "expression.toml"
        if alt.is_file() and tomllib.loads(alt.read_text())["model"]["file"] == args.onnx.name:
            fp_manifest = alt
    fm = tomllib.loads(fp_manifest.read_text())
    assert fm["model"]["file"] == args.onnx.name, (fp_manifest, fm["model"]["file"])
    argv_str = " ".join(sys.argv[1:] if argv is None else argv)
    prov = (f"{fm['model']['provenance']}; then quantized by `python training/quantize.py {argv_str}` "
            f"(onnxruntime static QDQ, {args.calib} FER2013 Training images seed {args.seed}, {args.method}, "
            f"{'per-tensor' if args.per_tensor else 'per-channel'} int8 weights, per-tensor {args.act_type} "
            f"activations) on {time.strftime('%Y-%m-%d')}; fp32 val accuracy {acc(fp):.4f}")
    manifest = args.manifest or args.out.with_suffix(".toml")
    if manifest.resolve().parent != args.out.resolve().parent:
        ap.error("--manifest must be in the same folder as --out")
    sha = sha256_file(args.out)
    write_manifest(manifest, name=args.name, onnx_file=args.out, sha=sha, prov=prov, val_acc=acc(sim),
                   params=fm["metrics"]["params"], macs=fm["metrics"]["macs"], header=HEADER)
    print(f"[quant] wrote {manifest} (sha256 {sha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
