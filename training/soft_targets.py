"""Precompute a teacher ensemble's softened predictions on the training split.

Distillation with the teachers in the training loop costs one teacher
forward pass per teacher and batch: on a 2-core CPU that more than doubles
the cost of an epoch. For a fine-tuning phase (``train.py --init ...
--soft-targets FILE``) the ensemble's prediction on each training image and
on its mirror image is computed once here and stored::

    python training/soft_targets.py --teacher A.pt B.pt ... --temp 3 \
        --out training/cache/soft-targets.npz

The file holds ``probs`` and ``probs_flip`` (float32 ``[N, 7]``: the mean
over the teachers of ``softmax(logits / temp)``), the temperature, the
teachers' paths and a fingerprint of the training images and labels, so
that ``train.py`` refuses targets computed for other data. The ensemble's
validation accuracy (plain and flip-averaged, at temperature 1) is printed.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from train import load_teachers, predict_logits  # noqa: E402


@torch.no_grad()
def ensemble_probs(teachers: list[torch.nn.Module], x_u8: torch.Tensor, temp: float, flip: bool) -> torch.Tensor:
    """Mean over ``teachers`` of ``softmax(logits / temp)``."""
    return torch.stack([predict_logits(t, x_u8, flip=flip).div(temp).softmax(1) for t in teachers]).mean(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA, help="dataset root or fer2013.csv")
    ap.add_argument("--format", default="auto", choices=["auto", *fer_data.READERS])
    ap.add_argument("--teacher", type=Path, nargs="+", required=True, help="teacher checkpoints")
    ap.add_argument("--temp", type=float, required=True, help="softmax temperature of the targets")
    ap.add_argument("--out", type=Path, required=True, help="output .npz")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teachers = load_teachers(args.teacher, torch.device("cpu"))

    xva, yva = fer_data.load_split(args.data, "val", args.format)
    xva_t, yva_t = torch.from_numpy(xva), torch.from_numpy(yva.astype(np.int64))
    p, pf = ensemble_probs(teachers, xva_t, 1.0, False), ensemble_probs(teachers, xva_t, 1.0, True)
    acc = float((p.argmax(1) == yva_t).float().mean())
    acc_flip = float(((p + pf).argmax(1) == yva_t).float().mean())
    print(f"[soft-targets] ensemble of {len(teachers)}: val acc {acc:.4f} (flip-averaged {acc_flip:.4f})",
          flush=True)

    xtr, ytr = fer_data.load_split(args.data, "train", args.format)
    xtr_t = torch.from_numpy(xtr)
    probs = ensemble_probs(teachers, xtr_t, args.temp, False)
    probs_flip = ensemble_probs(teachers, xtr_t, args.temp, True)
    agree = float((probs.argmax(1) == torch.from_numpy(ytr.astype(np.int64))).float().mean())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, probs=probs.numpy().astype(np.float32), probs_flip=probs_flip.numpy().astype(np.float32),
             temp=np.float32(args.temp), teachers=np.array([str(t) for t in args.teacher]),
             fingerprint=np.array(fer_data.fingerprint(xtr, ytr)), val_acc=np.float32(acc))
    os.replace(tmp, args.out)
    print(f"[soft-targets] {len(ytr)} training images (teachers agree with the labels on {agree:.4f}); "
          f"{args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
