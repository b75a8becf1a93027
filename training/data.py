"""FER2013 data loading for ferd's expression model.

Three on-disk formats are understood, all producing the same thing: a pair
``(x, y)`` with ``x`` a ``uint8`` array ``[N, 48, 48]`` (grey pixels, row-major)
and ``y`` a ``uint8`` array ``[N]`` of labels in FER2013's order (``LABELS``).

* ``folder``  the common Kaggle layout ``<root>/{train,val,test}/<class>/*.jpg``
  with class folder names ``angry disgust fear happy neutral sad surprise``.
  Images of any size or colour are converted to grey and resized to 48x48, so
  users' own data in this layout works too.
* ``csv``     the original ``fer2013.csv`` (columns ``emotion,pixels,Usage``;
  ``Usage`` is ``Training`` / ``PublicTest`` / ``PrivateTest``).
* ``packed``  ``<root>/packed/{split}-images.u8.xz`` (xz-compressed raw uint8,
  N*48*48) and ``{split}-labels.u8`` (N label bytes, FER2013 order). The
  fastest path; what ``auto`` picks when it exists.

Split names are ``train`` / ``val`` / ``test``; in the CSV they map to
``Training`` / ``PublicTest`` / ``PrivateTest``.

Decoded arrays are cached as ``.npz`` under ``training/cache/`` (gitignored),
keyed by the absolute source path, format, split and the source's size and
modification time, so a changed source is re-read.

Command line (build the caches and print class counts)::

    python training/data.py [--data PATH] [--format auto|folder|csv|packed] \
        [--splits train val] [--verify]

``--verify`` also decodes the JPEG folders and checks that they agree with
the packed arrays, pixel for pixel.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import lzma
import os
import sys
from pathlib import Path

import numpy as np

#: Label order of FER2013 (and of the model's output).
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}
IMAGE_SIZE = 48

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Default data location: ``../shared/datasets/fer2013`` relative to the repo root.
DEFAULT_DATA = (REPO_ROOT / ".." / "shared" / "datasets" / "fer2013").resolve()
CACHE_DIR = REPO_ROOT / "training" / "cache"

SPLITS = ("train", "val", "test")
CSV_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


# --------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------
def detect_format(path: Path, split: str) -> str:
    """Pick the format for ``split`` under ``path`` (``auto`` resolution).

    A ``.csv`` file is ``csv``; a directory with ``packed/{split}-images.u8.xz``
    is ``packed``; a directory with ``{split}/`` is ``folder``; a directory with
    ``fer2013.csv`` is ``csv``.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"{path}: not a directory or a .csv file")
    if (path / "packed" / f"{split}-images.u8.xz").is_file():
        return "packed"
    if (path / split).is_dir():
        return "folder"
    if (path / "fer2013.csv").is_file():
        return "csv"
    raise FileNotFoundError(f"no {split!r} split found under {path} (looked for packed/, {split}/, fer2013.csv)")


def _csv_file(path: Path) -> Path:
    path = Path(path)
    return path if path.is_file() else path / "fer2013.csv"


def _source_files(path: Path, fmt: str, split: str) -> list[Path]:
    """The files whose size/mtime identify the source, for the cache key."""
    path = Path(path)
    if fmt == "packed":
        return [path / "packed" / f"{split}-images.u8.xz", path / "packed" / f"{split}-labels.u8"]
    if fmt == "csv":
        return [_csv_file(path)]
    # folder: the class directories (their mtime changes when files are added/removed)
    root = path / split
    return [root] + sorted(p for p in root.iterdir() if p.is_dir())


# --------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------
def read_packed(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``packed/{split}-images.u8.xz`` and ``packed/{split}-labels.u8``."""
    base = Path(path) / "packed"
    with lzma.open(base / f"{split}-images.u8.xz", "rb") as f:
        raw = f.read()
    y = np.fromfile(base / f"{split}-labels.u8", dtype=np.uint8)
    n = len(y)
    if len(raw) != n * IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(f"{base}: {len(raw)} image bytes for {n} labels")
    x = np.frombuffer(raw, dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE).copy()
    if y.max(initial=0) >= len(LABELS):
        raise ValueError(f"{base}: label out of range")
    return x, y


def _load_image(file: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as im:
        im = im.convert("L")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def read_folder(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the Kaggle layout ``{path}/{split}/<class>/*.jpg``.

    Order: by FER2013 label, then by sorted file name (the same order as the
    packed arrays). Unknown class folders are an error, not silently skipped.
    """
    root = Path(path) / split
    class_dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    unknown = sorted(set(class_dirs) - set(LABELS))
    if unknown:
        raise ValueError(f"{root}: unknown class folders {unknown}; expected {list(LABELS)}")
    xs, ys = [], []
    for label, name in enumerate(LABELS):
        d = class_dirs.get(name)
        if d is None:
            continue
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for f in files:
            xs.append(_load_image(f))
        ys.append(np.full(len(files), label, dtype=np.uint8))
    if not xs:
        raise ValueError(f"{root}: no images")
    return np.stack(xs), np.concatenate(ys)


def read_csv(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the original ``fer2013.csv`` (``emotion,pixels,Usage``), one split."""
    file = _csv_file(path)
    usage = CSV_USAGE[split]
    xs, ys = [], []
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{file}: missing columns {sorted(missing)}")
        for row in reader:
            if row["Usage"].strip() != usage:
                continue
            px = np.array(row["pixels"].split(), dtype=np.uint8)
            if px.size != IMAGE_SIZE * IMAGE_SIZE:
                raise ValueError(f"{file}: a row has {px.size} pixels")
            label = int(row["emotion"])
            if not 0 <= label < len(LABELS):
                raise ValueError(f"{file}: label {label} out of range")
            xs.append(px.reshape(IMAGE_SIZE, IMAGE_SIZE))
            ys.append(label)
    if not xs:
        raise ValueError(f"{file}: no rows with Usage={usage}")
    return np.stack(xs), np.array(ys, dtype=np.uint8)


READERS = {"packed": read_packed, "folder": read_folder, "csv": read_csv}


# --------------------------------------------------------------------------
# cached entry point
# --------------------------------------------------------------------------
def _cache_path(path: Path, fmt: str, split: str) -> Path:
    h = hashlib.sha256()
    h.update(f"{Path(path).resolve()}|{fmt}|{split}".encode())
    for f in _source_files(path, fmt, split):
        st = f.stat()
        h.update(f"|{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return CACHE_DIR / f"{split}-{fmt}-{h.hexdigest()[:16]}.npz"


def load_split(path: Path | str = DEFAULT_DATA, split: str = "train", fmt: str = "auto",
               cache: bool = True, verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as ``(x uint8 [N,48,48], y uint8 [N])``, cached as .npz."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path, split)
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}")
    cp = _cache_path(path, fmt, split) if cache else None
    if cp is not None and cp.is_file():
        with np.load(cp) as z:
            x, y = z["x"], z["y"]
        if verbose:
            print(f"[data] {split}: {len(y)} images from cache {cp.relative_to(REPO_ROOT)}", file=sys.stderr)
        return x, y
    x, y = READERS[fmt](path, split)
    if cp is not None:
        cp.parent.mkdir(parents=True, exist_ok=True)
        tmp = cp.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=y)  # uncompressed: loads in well under a second
        os.replace(tmp, cp)
    if verbose:
        print(f"[data] {split}: {len(y)} images read as {fmt} from {path}", file=sys.stderr)
    return x, y


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of images and labels, in order: identifies a split's decoded contents."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def class_counts(y: np.ndarray) -> np.ndarray:
    return np.bincount(y, minlength=len(LABELS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root or fer2013.csv (default: %(default)s)")
    ap.add_argument("--format", default="auto", choices=["auto", *READERS])
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=SPLITS)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--verify", action="store_true", help="check the JPEG folders against packed/")
    args = ap.parse_args(argv)
    for split in args.splits:
        x, y = load_split(args.data, split, args.format, cache=not args.no_cache)
        counts = ", ".join(f"{n} {c}" for n, c in zip(LABELS, class_counts(y)))
        print(f"{split}: {len(y)} images {x.shape} — {counts}")
        if args.verify:
            xf, yf = read_folder(args.data, split)
            xp, yp = read_packed(args.data, split)
            same = xf.shape == xp.shape and np.array_equal(yf, yp) and np.array_equal(xf, xp)
            diff = int(np.abs(xf.astype(int) - xp.astype(int)).max()) if xf.shape == xp.shape else -1
            print(f"  verify folder vs packed: {'identical' if same else 'DIFFERENT'} (max pixel diff {diff})")
            if not same:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
