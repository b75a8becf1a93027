"""Train ferd's expression classifier (FerNet, see model.py) on FER2013.

Example (quick model, one CPU thread)::

    OMP_WAIT_POLICY=PASSIVE python training/train.py --name quick --width 0.5 --epochs 10 --threads 1

Run directory (``--out``, default ``training/runs/<name>``; gitignored):

* ``last.pt``       checkpoint after every epoch (model, optimizer, step, history,
                    arguments); ``--resume`` continues from it
* ``best.pt``       the checkpoint of the epoch with the best val accuracy
                    (single forward pass, as deployed; flip-TTA is logged too)
* ``metrics.csv``   one row per epoch; ``history.json`` the same plus per-class recall
* ``args.json``     the arguments of the latest invocation

Training recipe: augmentation on whole batch tensors (random crop with
replicate padding, horizontal flip, small rotation/scale, random erasing);
cross-entropy with label smoothing and class weights ``(N / (K n_c))^p``
(``--class-weight-power``, 0 = unweighted, 1 = fully balanced); AdamW without
decay on BatchNorm/bias; one-cycle (or cosine) learning-rate schedule computed
per step from the global step, so resuming is exact; evaluation on val every
epoch, plain and with flip averaging; early stopping after ``--patience``
epochs without improvement. Seeds are fixed and the data order and
augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run
reproduces an uninterrupted one.

Preprocessing (the contract with the Rust runtime): grey 48x48 face crop,
``x = (pixel / 255 - 0.5) / 0.5``, NCHW float32.

``--bench N`` times N training batches, prints the estimated seconds per
epoch and exits (use it to choose --width/--epochs for a time budget).
"""
from __future__ import annotations

import os

# Must be set before torch (and its OpenMP runtime) is loaded: spinning OpenMP
# threads hurt badly on a small, shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import csv
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from model import PREPROCESS, FerNet, build_model, count_macs, count_params  # noqa: E402

RUNS_DIR = fer_data.REPO_ROOT / "training" / "runs"


# --------------------------------------------------------------------------
# preprocessing and batch augmentation
# --------------------------------------------------------------------------
def to_input(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,48,48]`` or ``[B,1,48,48]`` -> normalized float32 ``[B,1,48,48]``."""
    if x_u8.dim() == 3:
        x_u8 = x_u8.unsqueeze(1)
    x = x_u8.to(torch.float32).mul_(PREPROCESS["scale"])
    return x.sub_(PREPROCESS["mean"]).div_(PREPROCESS["std"])


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad by ``pad`` (replicating edges) and crop back at a random offset per image."""
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    oy = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])[:, :, None]  # [B,h,1]
    cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])[:, None, :]  # [B,1,w]
    return xp[torch.arange(b, device=dev)[:, None, None], 0, rows, cols].unsqueeze(1)


def random_hflip(x: torch.Tensor, p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirrors each image with probability ``p``; returns the images and the boolean flip mask."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x), flip


def random_affine(x: torch.Tensor, p: float, degrees: float, scale: float) -> torch.Tensor:
    """With probability ``p`` per image: rotate by U(-deg, deg) and zoom by U(1-s, 1+s)."""
    if degrees <= 0 and scale <= 0:
        return x
    # Every image goes through grid_sample (identity for the unselected ones):
    # no data-dependent shapes, so no host-device synchronisation on a GPU.
    b, dev = x.shape[0], x.device
    sel = (torch.rand(b, device=dev) < p).to(x.dtype)
    ang = (torch.rand(b, device=dev) * 2 - 1) * math.radians(degrees) * sel
    zoom = 1 + (torch.rand(b, device=dev) * 2 - 1) * scale * sel
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    zero = torch.zeros(b, device=dev)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(sel[:, None, None, None] > 0, out, x)


def random_erasing(x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 0.2),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """With probability ``p`` per image, replace a random rectangle by Gaussian noise."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    sel = torch.rand(b, device=dev) < p
    a = (area[0] + torch.rand(b, device=dev) * (area[1] - area[0])) * h * w
    r = torch.exp(math.log(ratio[0]) + torch.rand(b, device=dev) * (math.log(ratio[1]) - math.log(ratio[0])))
    eh = torch.sqrt(a * r).round().clamp(1, h)
    ew = torch.sqrt(a / r).round().clamp(1, w)
    y0 = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
    x0 = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, dtype=torch.float32, device=dev)[None, :, None]
    xs = torch.arange(w, dtype=torch.float32, device=dev)[None, None, :]
    mask = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
            & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]) & sel[:, None, None])
    return torch.where(mask[:, None], torch.randn_like(x), x)


def augment(x: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The training augmentation; returns the batch and which images were mirrored."""
    x = random_crop(x, args.crop_pad)
    x, flip = random_hflip(x)
    x = random_affine(x, args.affine_p, args.rotate, args.zoom)
    return random_erasing(x, args.erase_p), flip


# --------------------------------------------------------------------------
# schedule, optimizer, loss
# --------------------------------------------------------------------------
def lr_at(step: int, total: int, steps_per_epoch: int, args: argparse.Namespace) -> float:
    """Learning rate at global ``step`` of ``total`` (pure function: resumable)."""
    hi = args.lr
    if args.schedule == "constant":
        # one epoch of linear warm-up, then flat (fine-tuning with --swa-start)
        return hi * min(1.0, (step + 1) / steps_per_epoch)
    if args.schedule == "onecycle":
        warm = max(1, int(args.warmup_pct * total))
        lo, end = hi / 25.0, hi / 1e4
        if step < warm:
            return lo + (hi - lo) * (1 - math.cos(math.pi * step / warm)) / 2
        t = min(1.0, (step - warm) / max(1, total - warm))
        return end + (hi - end) * (1 + math.cos(math.pi * t)) / 2
    # cosine with one epoch of linear warm-up
    warm = steps_per_epoch
    if step < warm:
        return hi * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return hi * (1 + math.cos(math.pi * t)) / 2


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)  # no decay on BN weights and biases
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def class_weights(y: np.ndarray, power: float) -> torch.Tensor:
    """``(N / (K n_c))^power``, normalized so the mean weight over samples is 1."""
    counts = np.bincount(y, minlength=len(fer_data.LABELS)).astype(np.float64)
    w = (len(y) / (len(counts) * np.maximum(counts, 1))) ** power
    w = w / ((w * counts).sum() / len(y))
    return torch.tensor(w, dtype=torch.float32)


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: nn.Module, x_u8: torch.Tensor, batch_size: int = 512,
                   flip: bool = False) -> torch.Tensor:
    """float32 logits of ``model`` (in eval mode) for uint8 images, optionally mirrored."""
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        xb = to_input(x_u8[i:i + batch_size])
        if flip:
            xb = xb.flip(3)
        with autocast(xb.device):
            out.append(model(xb).float())
    return torch.cat(out)


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA (tensor cores); a no-op context on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict:
    """Accuracy (single pass and flip-averaged), loss, per-class recall."""
    logits = predict_logits(model, x_u8, batch_size)
    logits_flip = predict_logits(model, x_u8, batch_size, flip=True)
    pred = logits.argmax(1)
    pred_tta = (logits.softmax(1) + logits_flip.softmax(1)).argmax(1)
    recall = [float((pred[y == c] == c).float().mean()) if (y == c).any() else float("nan")
              for c in range(len(fer_data.LABELS))]
    return {"loss": float(F.cross_entropy(logits, y.long())),
            "acc": float((pred == y).float().mean()),
            "acc_flip": float((pred_tta == y).float().mean()),
            "recall": dict(zip(fer_data.LABELS, recall))}


# --------------------------------------------------------------------------
# checkpoints and logs
# --------------------------------------------------------------------------
def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


CSV_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc_flip",
              "train_s", "eval_s", "best_val_acc", "best_epoch", "swa_n", "swa_val_acc", "swa_val_acc_flip"]


def write_logs(out: Path, history: list[dict]) -> None:
    with open(out / "metrics.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(out / "metrics.csv.tmp", out / "metrics.csv")
    (out / "history.json.tmp").write_text(json.dumps(history, indent=1))
    os.replace(out / "history.json.tmp", out / "history.json")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="train the FER2013 expression classifier",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, default=fer_data.DEFAULT_DATA, help="dataset root or fer2013.csv")
    ap.add_argument("--format", default="auto", choices=["auto", *fer_data.READERS])
    ap.add_argument("--name", default=None, help="run name (default: w<width>-e<epochs>)")
    ap.add_argument("--out", type=Path, default=None, help="run dir (default: training/runs/<name>)")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (model.py)")
    ap.add_argument("--stages", default=None,
                    help="stages as CxN,CxN,... (channels x conv layers) instead of FerNet's base; "
                         "e.g. 64x2,128x2,256x3,512x3 for a large teacher")
    ap.add_argument("--teacher", type=Path, nargs="+", default=None,
                    help="knowledge distillation: checkpoint(s) of trained teacher(s); their mean "
                         "softened prediction on the same augmented batch is a second target")
    ap.add_argument("--soft-targets", type=Path, default=None,
                    help="knowledge distillation from a teacher ensemble's predictions precomputed by "
                         "soft_targets.py (on each training image and its mirror; cheaper than --teacher, "
                         "for fine-tuning); its temperature replaces --kd-temp")
    ap.add_argument("--kd-alpha", type=float, default=0.7, help="weight of the distillation loss")
    ap.add_argument("--kd-temp", type=float, default=4.0, help="distillation temperature")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds: time 20 training steps and one evaluation first, then train for as "
                         "many epochs as fit (at most --epochs); the number chosen is printed and "
                         "recorded, so the run equals one with that --epochs. With --resume: the epoch "
                         "count is re-timed so that the rest of the run fits, from the epoch times "
                         "recorded so far (a run split over several sittings of fixed length)")
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of the schedule (default 40; a resumed run keeps its own)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--schedule", default="onecycle", choices=["onecycle", "cosine", "constant"])
    ap.add_argument("--warmup-pct", type=float, default=0.2, help="one-cycle warm-up fraction")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--class-weight-power", type=float, default=0.5,
                    help="class weights (N/(K n_c))^p: 0 none, 1 fully balanced")
    ap.add_argument("--crop-pad", type=int, default=4)
    ap.add_argument("--affine-p", type=float, default=0.5)
    ap.add_argument("--rotate", type=float, default=10.0, help="max rotation, degrees")
    ap.add_argument("--zoom", type=float, default=0.1, help="max relative zoom")
    ap.add_argument("--erase-p", type=float, default=0.5)
    ap.add_argument("--mixup", type=float, default=0.0,
                    help="mixup: blend every batch with a shuffled copy of itself, weight ~ Beta(a, a); "
                         "the loss mixes the two labels, and teachers see the blended images (0: off)")
    ap.add_argument("--patience", type=int, default=10, help="early stop after N epochs w/o improvement (0: off)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this checkpoint's weights and architecture (fresh optimizer and "
                         "schedule): fine-tuning")
    ap.add_argument("--swa-start", type=int, default=0,
                    help="stochastic weight averaging: from this epoch on (1-based), average the weights "
                         "at the end of every epoch, recompute BatchNorm statistics for the average, and "
                         "evaluate and keep (best.pt) the average instead of the last weights (0: off)")
    ap.add_argument("--resume", nargs="?", const="last", default=None,
                    help="resume from <out>/last.pt (or the given checkpoint)")
    ap.add_argument("--bench", type=int, default=0, help="time N training batches, print s/epoch, exit")
    args = ap.parse_args(argv)
    if args.epochs is None and not args.resume:
        args.epochs = 40
    if args.name is None:
        args.name = f"w{args.width:g}-e{args.epochs}"
    if args.out is None:
        args.out = RUNS_DIR / args.name
    return args


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """``"64x2,128x2"`` -> ``((64, 2), (128, 2))``."""
    try:
        stages = tuple((int(c), int(n)) for c, n in (part.split("x") for part in text.split(",")))
    except ValueError:
        raise SystemExit(f"--stages {text!r}: expected CxN,CxN,... such as 64x2,128x2,256x3") from None
    if not stages or any(c < 1 or n < 1 for c, n in stages):
        raise SystemExit(f"--stages {text!r}: channels and layer counts must be positive")
    return stages


def model_from_checkpoint(path: Path) -> tuple[FerNet, dict]:
    """The model a training checkpoint holds (weights of any float dtype, as float32), and the
    checkpoint."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ck["model_config"])
    model.load_state_dict({k: v.float() for k, v in ck["model"].items()})
    return model, ck


def load_teachers(paths: list[Path], device: torch.device) -> list[nn.Module]:
    """Teacher models from training checkpoints (any float dtype), frozen, in eval mode."""
    teachers = []
    for path in paths:
        t, ck = model_from_checkpoint(path)
        t.eval().requires_grad_(False)
        if device.type == "cuda":
            t = t.to(device, memory_format=torch.channels_last)
        print(f"[train] teacher {path}: val acc {ck.get('val_acc', float('nan')):.4f}, "
              f"{count_params(t):,} params")
        teachers.append(t)
    return teachers


def train_step(model: nn.Module, opt: torch.optim.Optimizer, criterion: nn.Module, xb: torch.Tensor,
               yb: torch.Tensor, lr: float, teachers: list[nn.Module], args: argparse.Namespace,
               soft: torch.Tensor | None = None,
               mix: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on an augmented batch; returns (loss, logits), still on the device.

    Distillation targets come from ``teachers`` run on the batch, or from ``soft`` (the
    precomputed ensemble probabilities of the batch's images, see soft_targets.py). ``mix`` is
    ``(perm, lam)`` of mixup: ``xb`` is already blended, the labels (and ``soft``) are blended here."""
    for g in opt.param_groups:
        g["lr"] = lr
    if xb.device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    with autocast(xb.device):
        logits = model(xb).float()
        if mix is not None:
            perm, lam = mix
            loss = lam * criterion(logits, yb) + (1 - lam) * criterion(logits, yb[perm])
            if soft is not None:
                soft = lam * soft + (1 - lam) * soft[perm]
        else:
            loss = criterion(logits, yb)
        if teachers or soft is not None:
            temp = args.kd_temp
            if soft is not None:
                target = soft
            else:
                with torch.no_grad():
                    target = torch.stack([t(xb).float().div(temp).softmax(1) for t in teachers]).mean(0)
            kd = F.kl_div(F.log_softmax(logits / temp, 1), target, reduction="batchmean") * temp * temp
            loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kd
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def choose_epochs(model: nn.Module, criterion: nn.Module, teachers: list[nn.Module], x_u8: torch.Tensor,
                  y: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor, steps_per_epoch: int,
                  remaining_s: float, args: argparse.Namespace) -> int:
    """Epochs that fit in ``remaining_s``, timed on a throw-away copy of the model."""
    probe = copy.deepcopy(model)
    popt = make_optimizer(probe, args)
    sync = torch.cuda.synchronize if x_u8.device.type == "cuda" else (lambda: None)
    n_warm, n_timed = 5, 20
    for i in range(n_warm + n_timed):
        if i == n_warm:
            sync()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(y), (args.batch_size,), device=x_u8.device)
        xb, _ = augment(to_input(x_u8[idx]), args)
        train_step(probe, popt, criterion, xb, y[idx], 1e-4, teachers, args)
    sync()
    step_s = (time.perf_counter() - t0) / n_timed
    t1 = time.perf_counter()
    evaluate(probe, xva, yva)
    sync()
    eval_s = time.perf_counter() - t1
    epoch_s = step_s * steps_per_epoch + eval_s
    epochs = max(1, min(args.epochs, int(remaining_s / (epoch_s * 1.1))))
    print(f"[train] time budget: {step_s * 1e3:.1f} ms/step, eval {eval_s:.1f} s -> ~{epoch_s:.1f} s/epoch; "
          f"{remaining_s:.0f} s left -> {epochs} epochs", flush=True)
    del probe, popt
    return epochs


def retime_epochs(history: list[dict], start_epoch: int, remaining_s: float) -> int:
    """The epoch count of a resumed run whose rest fits in ``remaining_s``, timed from the median
    of its last recorded epochs (the same jobs beside it, the same device)."""
    recent = sorted(r["train_s"] + r["eval_s"] for r in history[-5:])
    epoch_s = recent[len(recent) // 2]
    fit = max(1, int(remaining_s / (epoch_s * 1.05)))
    print(f"[train] time budget: {epoch_s:.1f} s/epoch recorded, {fit} more epochs fit", flush=True)
    return start_epoch + fit


def load_soft_targets(path: Path, x: np.ndarray, y: np.ndarray,
                      args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble probabilities of soft_targets.py for these training images (checked)."""
    with np.load(path) as f:
        if str(f["fingerprint"]) != fer_data.fingerprint(x, y):
            raise SystemExit(f"--soft-targets {path}: computed for other training data "
                             "(run soft_targets.py on this --data)")
        probs, probs_flip, temp = f["probs"], f["probs_flip"], float(f["temp"])
        print(f"[train] soft targets {path}: ensemble val acc {float(f['val_acc']):.4f}, temperature {temp:g}")
    if temp != args.kd_temp:
        print(f"[train] note: --kd-temp {args.kd_temp:g} replaced by the targets' temperature {temp:g}")
        args.kd_temp = temp
    return torch.from_numpy(probs), torch.from_numpy(probs_flip)


@torch.no_grad()
def swa_add(avg: nn.Module, model: nn.Module, n: int) -> None:
    """``avg <- (n avg + model) / (n + 1)`` over the float parameters and buffers."""
    src = model.state_dict()
    for k, v in avg.state_dict().items():
        if v.is_floating_point():
            v.mul_(n / (n + 1)).add_(src[k], alpha=1 / (n + 1))


@torch.no_grad()
def recompute_bn(model: nn.Module, x_u8: torch.Tensor, args: argparse.Namespace, seed: int,
                 batch_size: int = 256) -> None:
    """BatchNorm running statistics of ``model`` recomputed over the training images, augmented
    as in training (seeded): averaged weights need their own statistics. (Statistics of the
    unaugmented images scored 0.75 pt lower on val than the running ones in a test.)"""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    torch.manual_seed(seed)
    for i in range(0, len(x_u8), batch_size):
        xb, _ = augment(to_input(x_u8[i:i + batch_size]), args)
        with autocast(xb.device):
            model(xb)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed)

    # ---- data (kept as uint8; converted and augmented per batch) ----
    xtr, ytr = fer_data.load_split(args.data, "train", args.format)
    xva, yva = fer_data.load_split(args.data, "val", args.format)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64))
    xva_t, yva_t = torch.from_numpy(xva), torch.from_numpy(yva.astype(np.int64))
    if device.type == "cuda":
        xtr_t, ytr_t, xva_t, yva_t = (t.to(device) for t in (xtr_t, ytr_t, xva_t, yva_t))
    steps_per_epoch = len(ytr) // args.batch_size  # drop_last: no tiny BatchNorm batches

    # ---- model, optimizer; resume ----
    out: Path = args.out
    ckpt = None
    if args.resume:
        path = out / "last.pt" if args.resume == "last" else Path(args.resume)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = build_model(ckpt["model_config"])
        if abs(ckpt["model_config"]["width"] - args.width) > 1e-9:
            print(f"[train] note: --width {args.width} ignored, checkpoint has {ckpt['model_config']['width']}")
        print(f"[train] resuming from {path} after epoch {ckpt['epoch']}")
    elif args.init:
        model, ick = model_from_checkpoint(args.init)
        print(f"[train] initialised from {args.init} (val acc {ick.get('val_acc', float('nan')):.4f}); "
              f"architecture and dropout from its config {ick['model_config']}")
    else:
        stages = parse_stages(args.stages) if args.stages else None
        model = (FerNet(width=args.width, dropout=args.dropout, stages=stages) if stages
                 else FerNet(width=args.width, dropout=args.dropout))
    # every invocation's arguments, for provenance (a resumed run may change --epochs)
    argv_history = (ckpt.get("argv_history", [ckpt["argv"]]) if ckpt is not None else []) + [sys.argv[1:]]
    params, macs = count_params(model), count_macs(model)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, args)
    start_epoch, step, history = 0, 0, []
    best_acc, best_epoch, stale = -1.0, -1, 0
    swa, swa_n = (copy.deepcopy(model), 0) if args.swa_start else (None, 0)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if swa is not None and "swa" in ckpt:
            swa.load_state_dict(ckpt["swa"])
            swa_n = ckpt["swa_n"]
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        if args.time_budget and history and not args.bench and start_epoch < ckpt["args"]["epochs"]:
            fit = retime_epochs(history, start_epoch, args.time_budget - (time.perf_counter() - t_start))
            args.epochs = min(args.epochs, fit) if args.epochs else fit
        elif args.epochs is None or args.time_budget:
            # a finished run stays finished; --epochs re-times only when given without a budget
            args.epochs = ckpt["args"]["epochs"]
        if ckpt["args"]["epochs"] != args.epochs:
            print(f"[train] note: schedule re-timed from {ckpt['args']['epochs']} to {args.epochs} epochs "
                  f"at step {step}")
        best_acc, best_epoch, stale = ckpt["best_acc"], ckpt["best_epoch"], ckpt["stale"]
    weights = class_weights(ytr, args.class_weight_power).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=args.label_smoothing)
    teachers = load_teachers(args.teacher, device) if args.teacher else []
    soft = soft_flip = None
    if args.soft_targets:
        if teachers:
            raise SystemExit("--teacher and --soft-targets exclude each other")
        soft, soft_flip = (t.to(device) for t in load_soft_targets(args.soft_targets, xtr, ytr, args))
    if args.time_budget and ckpt is None and not args.bench:
        args.epochs = choose_epochs(model, criterion, teachers, xtr_t, ytr_t, xva_t, yva_t, steps_per_epoch,
                                    args.time_budget - (time.perf_counter() - t_start), args)
    total_steps = steps_per_epoch * args.epochs
    print(f"[train] {args.name}: width {model.config['width']} params {params:,} MACs {macs:,}; "
          f"{len(ytr)} train / {len(yva)} val; {steps_per_epoch} steps/epoch x {args.epochs} epochs; "
          f"threads {torch.get_num_threads()} device {device}")
    print(f"[train] class weights {[round(float(w), 3) for w in weights]}")

    out.mkdir(parents=True, exist_ok=True)
    args_json = {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()}
    (out / "args.json").write_text(json.dumps({"argv": sys.argv[1:], "args": args_json}, indent=1))

    for epoch in range(start_epoch, args.epochs):
        # data order and augmentation of epoch e depend only on (seed, e)
        torch.manual_seed(args.seed * 100003 + epoch)
        perm = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(len(ytr))).to(device)
        mix_rng = np.random.default_rng([args.seed, epoch, 1])
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        loss_acc, correct_acc = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
        n_steps = min(steps_per_epoch, args.bench) if args.bench else steps_per_epoch
        for i in range(n_steps):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb, flip = augment(to_input(xtr_t[idx]), args)
            yb = ytr_t[idx]
            sb = torch.where(flip[:, None], soft_flip[idx], soft[idx]) if soft is not None else None
            mix = None
            if args.mixup > 0:
                lam = float(mix_rng.beta(args.mixup, args.mixup))
                mperm = torch.randperm(len(yb), device=device)
                xb = lam * xb + (1 - lam) * xb[mperm]
                mix = (mperm, lam)
            lr = lr_at(step, total_steps, steps_per_epoch, args)
            loss, logits = train_step(model, opt, criterion, xb, yb, lr, teachers, args, sb, mix)
            step += 1
            # summed on the device: no host synchronisation per step
            loss_acc = loss_acc + loss * len(yb)
            correct_acc = correct_acc + (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if (i + 1) % 25 == 0 or i + 1 == n_steps:
                loss_sum, correct = float(loss_acc), int(correct_acc)
                el = time.perf_counter() - t0
                print(f"[train] epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {loss_sum / seen:.4f} "
                      f"acc {correct / seen:.4f} lr {lr:.2e} {seen / el:.0f} img/s "
                      f"(epoch est. {el / (i + 1) * steps_per_epoch:.0f} s)", flush=True)
        train_s = time.perf_counter() - t0
        if args.bench:
            print(f"[bench] {n_steps} batches of {args.batch_size} in {train_s:.1f} s -> "
                  f"{train_s / n_steps * steps_per_epoch:.0f} s/epoch (train only)")
            return 0

        t1 = time.perf_counter()
        ev = evaluate(model, xva_t, yva_t)
        # With SWA running, the average is what is judged and kept.
        ev_swa = None
        if swa is not None and epoch + 1 >= args.swa_start:
            swa_add(swa, model, swa_n)
            swa_n += 1
            recompute_bn(swa, xtr_t, args, seed=args.seed * 100003 + epoch + 7)
            ev_swa = evaluate(swa, xva_t, yva_t)
        judged = ev_swa if ev_swa is not None else ev
        eval_s = time.perf_counter() - t1
        improved = judged["acc"] > best_acc
        if improved:
            best_acc, best_epoch, stale = judged["acc"], epoch + 1, 0
        else:
            stale += 1
        row = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / seen,
               "train_acc": correct / seen, "val_loss": ev["loss"], "val_acc": ev["acc"],
               "val_acc_flip": ev["acc_flip"], "train_s": train_s, "eval_s": eval_s,
               "best_val_acc": best_acc, "best_epoch": best_epoch, "val_recall": ev["recall"]}
        if ev_swa is not None:
            row.update({"swa_n": swa_n, "swa_val_acc": ev_swa["acc"], "swa_val_acc_flip": ev_swa["acc_flip"],
                        "swa_val_recall": ev_swa["recall"]})
        history.append(row)
        print(f"[train] epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f} acc "
              f"{row['train_acc']:.4f} | val loss {ev['loss']:.4f} acc {ev['acc']:.4f} (flip {ev['acc_flip']:.4f}) "
              f"| {train_s:.0f}+{eval_s:.0f} s | best {best_acc:.4f} @ {best_epoch}"
              + (f" | SWA of {swa_n}: {ev_swa['acc']:.4f} (flip {ev_swa['acc_flip']:.4f})" if ev_swa else ""),
              flush=True)

        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_config": model.config,
                 "epoch": epoch + 1, "step": step, "history": history, "best_acc": best_acc,
                 "best_epoch": best_epoch, "stale": stale, "args": args_json, "argv": sys.argv[1:],
                 "argv_history": argv_history,
                 "params": params, "macs": macs, "val_acc": ev["acc"], "val_acc_flip": ev["acc_flip"],
                 "torch_version": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if swa is not None:
            state.update({"swa": swa.state_dict(), "swa_n": swa_n})
        save_atomic(state, out / "last.pt")
        if improved and ev_swa is not None:
            # best.pt holds the averaged weights, as export.py expects ("model")
            save_atomic({**{k: v for k, v in state.items() if k not in ("swa", "optimizer")},
                         "model": swa.state_dict(), "val_acc": ev_swa["acc"],
                         "val_acc_flip": ev_swa["acc_flip"], "swa_of": swa_n}, out / "best.pt")
        elif improved:
            shutil.copyfile(out / "last.pt", out / "best.pt.tmp")
            os.replace(out / "best.pt.tmp", out / "best.pt")
        write_logs(out, history)
        if args.patience and stale >= args.patience:
            print(f"[train] early stop: no improvement for {stale} epochs")
            break
    print(f"[train] done: best val acc {best_acc:.4f} at epoch {best_epoch}; {out / 'best.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
