"""PyTorch post-training int8 quantization of a checkpoint, exported to NNEF for tract.

Example (the quick model)::

    python training/nnef_export.py --run training/runs/quick \
        --out models/expression-quick-int8.nnef.tgz

or, from a shipped fp32 ONNX file when its checkpoint is not at hand (the
network is rebuilt by training/onnx_to_torch.py, BatchNorm already folded)::

    python training/nnef_export.py --onnx models/expression-kd.onnx \
        --out models/expression-kd-int8.nnef.tgz --eval

Steps:

1. load ``<run>/best.pt`` (or rebuild the ``--onnx`` file), fuse every
   conv3x3-BN-ReLU (conv3x3-ReLU for ``--onnx``) into one ``ConvReLU2d``;
2. eager-mode static PTQ (``torch.ao.quantization``): a ``QuantStub`` before
   the first conv, ``DeQuantStub`` after the linear head, observers calibrated on
   ``--calib`` FER2013 *training* images; quint8 activations (per-tensor),
   dequantized after the last conv (global mean + linear head stay f32: a
   quantized ``mean`` fails to load in tract 0.23.9, see ``--int8-tail``),
   qint8 weights (``--qconfig qnnpack``: per-tensor symmetric, zero point 0;
   ``fbgemm``: per-channel, 7-bit activations); ``--observer minmax`` swaps the
   qconfig's activation observer (``HistogramObserver`` by default) for a
   ``MinMaxObserver``;
3. export the quantized module with ``torch_to_nnef`` (target ``TractNNEF``
   0.23.9, ``check_io=False`` because the check would download a tract binary:
   nothing may be downloaded here; a stand-in script answers the ``tract
   --version`` query that TractNNEF makes anyway) to an NNEF ``.tgz`` archive;
4. report the PyTorch-quantized val accuracy (``--eval``) next to fp32 (with
   no ``--out``, only that: for comparing calibration settings).

training/tract_bench.py then loads the archive with the ``tract`` Python
bindings and measures agreement and latency. Figures in training/INT8.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from export import normalize  # noqa: E402
from model import INPUT_SHAPE, build_model  # noqa: E402


class QuantFerNet(nn.Module):
    """FerNet with fused conv-BN-ReLU and quant/dequant stubs (eager-mode quantization)."""

    def __init__(self, fp32: nn.Module, int8_tail: bool = False):
        super().__init__()
        self.int8_tail = int8_tail
        self.quant = torch.ao.quantization.QuantStub()
        self.features = fp32.features
        self.head = fp32.head
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        if self.int8_tail:  # quantized mean + linear: tract 0.23.9 cannot load this (INT8.md)
            return self.dequant(self.head(x.mean(dim=(2, 3))))
        # default: dequantize after the last conv; global mean and the 7-way head in f32
        return self.head(self.dequant(x).mean(dim=(2, 3)))


def load_fp32(source: Path) -> nn.Module:
    """fp32 FerNet in eval mode from a checkpoint (``best.pt``) or an export.py ONNX file."""
    if source.suffix == ".onnx":
        from onnx_to_torch import load_onnx
        return load_onnx(source).eval()
    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def quantize(source: Path, calib: np.ndarray, qconfig: str, int8_tail: bool = False,
             observer: str = "histogram") -> tuple[nn.Module, nn.Module]:
    """(fp32 reference, PyTorch int8 model) for ``source`` (``best.pt`` or ``.onnx``)."""
    fp32 = load_fp32(source)
    ref = load_fp32(source)
    q = QuantFerNet(fp32, int8_tail).eval()
    for name, m in q.features.named_children():
        if isinstance(m, nn.Sequential) and len(m) == 3:  # ConvBNReLU
            torch.ao.quantization.fuse_modules(m, ["0", "1", "2"], inplace=True)
        elif isinstance(m, nn.Sequential) and len(m) == 2:  # Conv-ReLU, BN folded (onnx_to_torch)
            torch.ao.quantization.fuse_modules(m, ["0", "1"], inplace=True)
    torch.backends.quantized.engine = qconfig
    q.qconfig = torch.ao.quantization.get_default_qconfig(qconfig)
    if observer == "minmax":
        q.qconfig = torch.ao.quantization.QConfig(
            activation=torch.ao.quantization.MinMaxObserver.with_args(
                dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                reduce_range=qconfig == "fbgemm"),
            weight=q.qconfig.weight)
    elif observer != "histogram":
        raise ValueError(f"unknown observer {observer!r}")
    if not int8_tail:
        q.head.qconfig = None
    torch.ao.quantization.prepare(q, inplace=True)
    with torch.no_grad():
        for i in range(0, len(calib), 100):
            q(torch.from_numpy(calib[i:i + 100]))
    torch.ao.quantization.convert(q, inplace=True)
    return ref, q


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PyTorch PTQ int8 + torch_to_nnef export",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run dir (uses <run>/best.pt)")
    src.add_argument("--onnx", type=Path, help="fp32 ONNX from training/export.py (BatchNorm folded)")
    ap.add_argument("--out", type=Path, help="output archive, e.g. models/x.nnef.tgz (none: no export)")
    ap.add_argument("--qconfig", default="qnnpack", choices=["qnnpack", "fbgemm"])
    ap.add_argument("--observer", default="histogram", choices=["histogram", "minmax"],
                    help="activation observer (weights: the qconfig's MinMax)")
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tract-version", default="0.23.9")
    ap.add_argument("--int8-tail", action="store_true",
                    help="quantize the global mean and the linear head too (fails to load in tract 0.23.9)")
    ap.add_argument("--eval", action="store_true", help="val accuracy of the PyTorch int8 model")
    ap.add_argument("--fp32", action="store_true", help="export the fp32 model instead (for comparison)")
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from torch_to_nnef import TractNNEF, export_model_to_nnef

    xtr, _ = fer_data.load_split(args.data, "train")
    rng = np.random.default_rng(args.seed)
    calib = normalize(xtr[rng.choice(len(xtr), size=args.calib, replace=False)])
    source = args.onnx if args.onnx else args.run / "best.pt"
    ref, q = quantize(source, calib, args.qconfig, args.int8_tail, args.observer)
    model = ref if args.fp32 else q
    print(model)
    if not args.fp32:
        ws = [m.weight() for m in q.modules() if callable(getattr(m, "weight", None))]
        per_tensor = [w for w in ws if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)]
        print(f"[quant] {len(ws)} quantized weight tensors, {len(per_tensor)} per-tensor; weight zero points "
              f"{sorted({int(w.q_zero_point()) for w in per_tensor})}")

    if args.eval:
        xva, yva = fer_data.load_split(args.data, "val")
        xv = torch.from_numpy(normalize(xva))
        with torch.no_grad():
            lf = torch.cat([ref(xv[i:i + 256]) for i in range(0, len(xv), 256)]).numpy()
            lq = torch.cat([q(xv[i:i + 256]) for i in range(0, len(xv), 256)]).numpy()
        print(f"[eval] val: fp32 {np.mean(lf.argmax(1) == yva):.4f}, PyTorch int8 ({args.qconfig}, "
              f"{args.observer}, calib {args.calib} seed {args.seed}) {np.mean(lq.argmax(1) == yva):.4f}, "
              f"agreement {np.mean(lf.argmax(1) == lq.argmax(1)) * 100:.2f}%")

    if args.out is None:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # TractNNEF insists on a tract CLI binary (it downloads one from GitHub when
    # none is given) even with check_io=False, where it only asks its --version:
    # hand it a stand-in that answers the version, so nothing is downloaded.
    shim = Path(tempfile.mkdtemp()) / "tract"
    shim.write_text(f"#!/bin/sh\necho tract {args.tract_version}\n")
    shim.chmod(0o755)
    target = TractNNEF(version=args.tract_version, check_io=False, specific_tract_binary_path=shim,
                       dump_identity_properties=False)
    t0 = time.perf_counter()
    out = export_model_to_nnef(model=model, args=(torch.from_numpy(calib[:1]),), file_path_export=args.out,
                               inference_target=target,
                               input_names=["input"], output_names=["logits"], compression_level=9)
    print(f"[nnef] wrote {out} ({Path(out).stat().st_size:,} bytes) in {time.perf_counter() - t0:.1f} s; "
          f"input {list(INPUT_SHAPE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
