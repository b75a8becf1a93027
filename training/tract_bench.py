"""Accuracy, agreement and single-thread latency of model files in tract (Python bindings).

Example::

    python training/tract_bench.py \
        --model fp32-onnx=models/expression-quick.onnx \
        --model qdq-onnx=models/expression-quick-int8-qdq.onnx \
        --model int8-nnef=models/expression-quick-int8.nnef.tgz \
        --ref-run training/runs/quick --json /tmp/bench.json

For each ``NAME=PATH`` (``.onnx`` or NNEF ``.tgz``/``.tar``/directory) the model
is loaded with PyPI ``tract`` (0.23.9, the version ferd's tract-onnx uses),
input fact ``[1,1,48,48]`` f32, optimised by the default CPU runtime, and run
on every val image one at a time (tract runs single-threaded here). Reported:

- val accuracy (packed val pixels, normalised as training/export.py does;
  ``ferd eval`` decodes the JPEGs itself, which can move a few images);
- argmax agreement and max |logit diff| against that file's reference:
  onnxruntime with graph optimisations **off** for ONNX files (for QDQ files
  the simulated quantization), and PyTorch for NNEF files (fp32, or the
  PyTorch-quantized model rebuilt from ``--ref-run`` (or ``--ref-onnx``, for
  files made by ``nnef_export.py --onnx``) with training/nnef_export.py's
  calibration when the name contains ``int8``);
- argmax agreement and max |logit diff| between every pair of the models
  given, all run in tract (e.g. int8 NNEF against the fp32 ONNX);
- latency: median and p10 of ``--latency`` single-image runs, models
  interleaved round-robin so that machine load hits them alike.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data as fer_data  # noqa: E402
from export import normalize  # noqa: E402
from model import INPUT_SHAPE  # noqa: E402


def load_tract(path: Path):
    import tract
    if path.suffix == ".onnx":
        m = tract.onnx().load(str(path))
        m.set_input_fact(0, f"{','.join(str(d) for d in INPUT_SHAPE)},f32")
        m = m.into_model()
    else:
        m = tract.nnef().load(str(path))  # tract-core extensions are on by default
    return m.into_runnable()


def tract_logits(run, x: np.ndarray) -> np.ndarray:
    return np.concatenate([run.run([x[i:i + 1]])[0].to_numpy().reshape(1, -1) for i in range(len(x))])


def reference(name: str, path: Path, x: np.ndarray, ref_run: Path | None, qconfig: str, calib_n: int,
              int8_tail: bool = False, ref_onnx: Path | None = None, observer: str = "histogram",
              seed: int = 0):
    if path.suffix == ".onnx":
        from quantize import run_all, session
        return run_all(session(path, 1, optimise=False), x)[0], "onnxruntime (graph optimisations off)"
    import torch
    from nnef_export import quantize
    if ref_run is None and ref_onnx is None:
        return None, "none (give --ref-run or --ref-onnx)"
    xtr, _ = fer_data.load_split(fer_data.DEFAULT_DATA, "train", verbose=False)
    calib = normalize(xtr[np.random.default_rng(seed).choice(len(xtr), size=calib_n, replace=False)])
    fp32, q = quantize(ref_onnx if ref_onnx else ref_run / "best.pt", calib, qconfig, int8_tail, observer)
    m = q if "int8" in name else fp32
    with torch.no_grad():
        out = torch.cat([m(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
    return out, f"PyTorch {'int8 ' + qconfig if 'int8' in name else 'fp32'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tract (Python) accuracy/agreement/latency of model files",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--ref-run", type=Path, help="run dir whose best.pt the NNEF files came from")
    ap.add_argument("--ref-onnx", type=Path, help="fp32 ONNX the NNEF files came from (nnef_export.py --onnx)")
    ap.add_argument("--qconfig", default="qnnpack", help="as given to nnef_export.py")
    ap.add_argument("--observer", default="histogram", help="as given to nnef_export.py")
    ap.add_argument("--calib", type=int, default=500, help="as given to nnef_export.py")
    ap.add_argument("--seed", type=int, default=0, help="as given to nnef_export.py")
    ap.add_argument("--int8-tail", action="store_true", help="as given to nnef_export.py")
    ap.add_argument("--latency", type=int, default=300, help="single-image runs per model for timing")
    ap.add_argument("--limit", type=int, default=0, help="only the first N val images (0: all)")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    import tract
    print(f"[tract] python bindings {tract.version()}")

    xva, yva = fer_data.load_split(fer_data.DEFAULT_DATA, "val")
    if args.limit:
        xva, yva = xva[:args.limit], yva[:args.limit]
    xv = normalize(xva)
    results, runs, logits = {}, {}, {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        path = Path(path)
        r: dict = {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
        results[name] = r
        try:
            t0 = time.perf_counter()
            runs[name] = load_tract(path)
            r["load_s"] = round(time.perf_counter() - t0, 3)
        except Exception as e:  # noqa: BLE001  (record tract's error text)
            r["error"] = f"{type(e).__name__}: {e}".split("Stack backtrace")[0].strip()
            print(f"[{name}] load FAILED: {r['error']}")
            continue
        lt = logits[name] = tract_logits(runs[name], xv)
        ref, ref_kind = reference(name, path, xv, args.ref_run, args.qconfig, args.calib, args.int8_tail,
                                  args.ref_onnx, args.observer, args.seed)
        r["accuracy"] = float((lt.argmax(1) == yva).mean())
        r["reference"] = ref_kind
        if ref is not None:
            r["ref_accuracy"] = float((ref.argmax(1) == yva).mean())
            r["agreement"] = float((lt.argmax(1) == ref.argmax(1)).mean())
            r["max_abs_diff"] = float(np.abs(lt - ref).max())
        print(f"[{name}] tract acc {r['accuracy']:.4f}; ref {ref_kind} acc {r.get('ref_accuracy', float('nan')):.4f}, "
              f"agreement {r.get('agreement', float('nan')) * 100:.2f}%, "
              f"max |diff| {r.get('max_abs_diff', float('nan')):.4f}")

    names = list(logits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            agree = float((logits[a].argmax(1) == logits[b].argmax(1)).mean())
            diff = float(np.abs(logits[a] - logits[b]).max())
            results[a].setdefault("vs", {})[b] = {"agreement": agree, "max_abs_diff": diff}
            print(f"[{a} vs {b}] (both in tract) agreement {agree * 100:.2f}%, max |diff| {diff:.4f}")

    # latency, round-robin
    times: dict[str, list[float]] = {n: [] for n in runs}
    rng = np.random.default_rng(1)
    for n in runs:  # warm-up
        for _ in range(10):
            runs[n].run([xv[:1]])
    for k in range(args.latency):
        x1 = xv[rng.integers(len(xv))][None]
        for n, run in runs.items():
            t0 = time.perf_counter()
            run.run([x1])
            times[n].append(time.perf_counter() - t0)
    for n, t in times.items():
        if not t:
            continue
        t = np.array(t) * 1e3
        results[n]["latency_ms_median"] = round(float(np.median(t)), 3)
        results[n]["latency_ms_p10"] = round(float(np.percentile(t, 10)), 3)
        print(f"[{n}] latency median {np.median(t):.3f} ms, p10 {np.percentile(t, 10):.3f} ms "
              f"({args.latency} single-image runs, 1 thread)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
