"""Rebuild a PyTorch FerNet from an exported ONNX file (BatchNorm already folded).

For int8 work on a model whose PyTorch checkpoint is not at hand: the shipped
``models/expression-kd.onnx`` (from ``training/runs/long_strong/best.pt``,
which is not kept here) holds everything needed. Its graph, as
training/export.py writes it (legacy exporter, opset 13, no normalisation in
the graph; the manifest's ``scale``/``mean``/``std`` are applied outside)::

    input [1,1,48,48] -> (Conv3x3+bias -> Relu) x2 -> MaxPool 2x2
                      -> ... four stages ... -> ReduceMean(axes 2,3) -> Gemm -> logits

``load_onnx(path)`` turns that into an ``nn.Module`` with the same
``features`` / ``head`` layout as ``model.FerNet`` (``features``: one
``Sequential(Conv2d(bias=True), ReLU)`` per conv, ``MaxPool2d`` between stages;
``head``: ``Linear``), so training/nnef_export.py quantizes it like a checkpoint
(``--onnx``). Anything outside that op pattern is refused, not guessed.

Check (val split, one batch at a time; onnxruntime with graph optimisations off)::

    python training/onnx_to_torch.py --onnx models/expression-kd.onnx

prints the max |logit difference| and the argmax agreement against
onnxruntime, and exits non-zero above ``--tolerance`` or below 100% agreement.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from export import normalize  # noqa: E402


class FoldedFerNet(nn.Module):
    """FerNet with BatchNorm folded into the convolutions (what the ONNX file holds)."""

    def __init__(self, features: nn.Sequential, head: nn.Linear):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(path: Path) -> FoldedFerNet:
    """Rebuild the fp32 network of a FerNet ONNX export (Conv/Relu/MaxPool/ReduceMean/Gemm)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError(f"{path}: expected one input and one output")
    nodes = list(g.node)
    layers: list[nn.Module] = []
    head: nn.Linear | None = None
    cur = g.input[0].name  # the graph must be one chain
    i = 0
    while i < len(nodes):
        n = nodes[i]
        a = _attrs(n)
        if n.input[0] != cur:
            raise ValueError(f"{path}: node {n.name} ({n.op_type}) does not follow the chain")
        if n.op_type == "Conv":
            w = inits[n.input[1]]
            b = inits[n.input[2]] if len(n.input) > 2 else np.zeros(w.shape[0], np.float32)
            k = tuple(a.get("kernel_shape", w.shape[2:]))
            pads = a.get("pads", [0, 0, 0, 0])
            if (a.get("group", 1) != 1 or tuple(a.get("strides", [1, 1])) != (1, 1)
                    or tuple(a.get("dilations", [1, 1])) != (1, 1) or pads[:2] != pads[2:]):
                raise ValueError(f"{path}: unsupported Conv attributes {a}")
            conv = nn.Conv2d(w.shape[1], w.shape[0], kernel_size=k, padding=tuple(pads[:2]), bias=True)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
                conv.bias.copy_(torch.from_numpy(b))
            if i + 1 >= len(nodes) or nodes[i + 1].op_type != "Relu" or nodes[i + 1].input[0] != n.output[0]:
                raise ValueError(f"{path}: Conv {n.name} is not followed by Relu")
            layers.append(nn.Sequential(conv, nn.ReLU(inplace=False)))
            cur = nodes[i + 1].output[0]
            i += 2
            continue
        if n.op_type == "MaxPool":
            k = tuple(a["kernel_shape"])
            s = tuple(a.get("strides", k))
            if any(a.get("pads", [0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
                raise ValueError(f"{path}: unsupported MaxPool attributes {a}")
            layers.append(nn.MaxPool2d(k, s))
        elif n.op_type == "ReduceMean":
            if sorted(a.get("axes", [])) != [2, 3] or a.get("keepdims", 1) != 0:
                raise ValueError(f"{path}: unsupported ReduceMean attributes {a}")
        elif n.op_type == "Gemm":
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) or not a.get("transB", 0):
                raise ValueError(f"{path}: unsupported Gemm attributes {a}")
            w, b = inits[n.input[1]], inits[n.input[2]]
            head = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(w))
                head.bias.copy_(torch.from_numpy(b))
            if n.output[0] != g.output[0].name or i != len(nodes) - 1:
                raise ValueError(f"{path}: Gemm must be the last node")
        else:
            raise ValueError(f"{path}: unsupported op {n.op_type} ({n.name})")
        cur = n.output[0]
        i += 1
    if head is None:
        raise ValueError(f"{path}: no Gemm head found")
    if [n.op_type for n in nodes][-2:] != ["ReduceMean", "Gemm"]:
        raise ValueError(f"{path}: expected ReduceMean then Gemm at the end")
    return FoldedFerNet(nn.Sequential(*layers), head).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="rebuild FerNet from ONNX and check it against onnxruntime",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=Path("models/expression-kd.onnx"))
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="only the first N val images (0: all)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max allowed |logit difference|")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import onnxruntime as ort

    model = load_onnx(args.onnx)
    print(model)
    n_params = sum(p.numel() for p in model.parameters())
    xva, yva = fer_data.load_split(args.data, "val")
    if args.limit:
        xva, yva = xva[:args.limit], yva[:args.limit]
    xv = normalize(xva)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(args.onnx), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    lo = np.concatenate([sess.run(None, {inp: xv[i:i + 1]})[0] for i in range(len(xv))])
    with torch.no_grad():
        lt = torch.cat([model(torch.from_numpy(xv[i:i + 256])) for i in range(0, len(xv), 256)]).numpy()
    diff = float(np.abs(lt - lo).max())
    agree = float((lt.argmax(1) == lo.argmax(1)).mean())
    print(f"[check] {args.onnx}: {n_params:,} params; {len(xv)} val images: max |dlogit| {diff:.2e}, "
          f"argmax agreement {agree * 100:.2f}%; accuracy onnxruntime {np.mean(lo.argmax(1) == yva):.4f}, "
          f"PyTorch {np.mean(lt.argmax(1) == yva):.4f}")
    return 0 if diff <= args.tolerance and agree == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
