"""The expression classifier: a small VGG-style CNN of plain 3x3 convolutions.

Plain 3x3 convolutions are the op that runs fastest per multiply-add on the
CPUs ferd targets (tract / onnxruntime; depthwise convolutions are several
times slower per MAC), so the net is four stages of ``[conv3x3-BN-ReLU] x 2``
with 2x2 max-pooling between stages, a global average pool, dropout and one
linear layer giving 7 logits (no softmax in the graph; the runtime applies it).

Input: ``[N, 1, 48, 48]`` float32, ``(pixel/255 - 0.5) / 0.5`` (see
``PREPROCESS``). Stage resolutions 48, 24, 12, 6.

Base channels (``width=1.0``): 16, 48, 96, 192 -> about 0.65 M parameters and
57 M multiply-adds per 48x48 image. ``width`` scales every stage's channels
(rounded to multiples of 8), so a quick model (e.g. ``width=0.5``: 8, 24, 48,
96, ~0.16 M params, ~15 M MACs) and the full model share the code. BatchNorm
is folded into the convolutions on ONNX export.

``python training/model.py [--width W ...]`` prints params and MACs.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

NUM_CLASSES = 7
INPUT_SHAPE = (1, 1, 48, 48)
#: Preprocessing contract shared with the Rust runtime: x = (pixel*scale - mean) / std.
PREPROCESS = {"scale": 1.0 / 255.0, "mean": 0.5, "std": 0.5}

#: (channels, number of conv3x3 layers) per stage at width 1.0.
BASE_STAGES: tuple[tuple[int, int], ...] = ((16, 2), (48, 2), (96, 2), (192, 2))


def scale_channels(c: int, width: float) -> int:
    """Channels of a stage at ``width``: rounded to a multiple of 8, at least 8."""
    return max(8, int(round(c * width / 8.0)) * 8)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class FerNet(nn.Module):
    """VGG-style CNN: stages of conv3x3-BN-ReLU, max-pool between stages, GAP, linear."""

    def __init__(self, width: float = 1.0, num_classes: int = NUM_CLASSES, dropout: float = 0.3,
                 stages: tuple[tuple[int, int], ...] = BASE_STAGES):
        super().__init__()
        self.config = {"width": width, "num_classes": num_classes, "dropout": dropout,
                       "stages": [list(s) for s in stages]}
        layers: list[nn.Module] = []
        cin = 1
        for i, (c, n) in enumerate(stages):
            c = scale_channels(c, width)
            for _ in range(n):
                layers.append(ConvBNReLU(cin, c))
                cin = c
            if i < len(stages) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean(dim=(2, 3))  # global average pool (ONNX: ReduceMean)
        return self.head(self.dropout(x))


def build_model(config: dict) -> FerNet:
    """Rebuild a model from ``FerNet.config`` (as stored in checkpoints)."""
    return FerNet(width=config["width"], num_classes=config["num_classes"], dropout=config["dropout"],
                  stages=tuple(tuple(s) for s in config["stages"]))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Multiply-adds of one forward pass at ``input_shape`` (batch 1).

    Counts convolutions and linear layers (BatchNorm folds into the convolutions
    at export; ReLU, pooling and the mean are negligible and not counted).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description="print the parameter and MAC counts of FerNet")
    ap.add_argument("--width", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    args = ap.parse_args()
    for w in args.width:
        m = FerNet(width=w)
        chans = [scale_channels(c, w) for c, _ in BASE_STAGES]
        print(f"width {w}: channels {chans}  params {count_params(m):,}  MACs {count_macs(m):,}")


if __name__ == "__main__":
    main()
