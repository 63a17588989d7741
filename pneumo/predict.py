"""Batch prediction over a folder: ``python -m pneumo.predict FOLDER --out results.csv``.

Options: ``--cams DIR`` (a Grad-CAM overlay PNG per image), ``--threshold T`` (default: the
recommended threshold in ``metrics.json`` beside the model, else 0.5), ``--batch-size N``.

The folder is walked recursively for supported images, which are read exactly as the app reads
uploads (:func:`pneumo.reader.read_batch`: same decoding and preprocessing, the same calibrated
model, the out-of-distribution check). Only ``--batch-size`` files are held in memory at a time
and the CSV is written as the run goes. An unreadable file gets a row with an error message;
the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumo import config
from pneumo.evaluate import recommended_threshold
from pneumo.images import SUPPORTED_EXTENSIONS
from pneumo.reader import Reading, decide

COLUMNS = ("file", "probability_pneumonia", "decision", "threshold", "ood_warning", "error",
           "notes", "cam_file")
NOT_READ = "NOT READ"
CAM_SUFFIX = ".gradcam.png"


def find_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Files under ``folder`` (recursively) with a supported extension, sorted by path.

    Files under ``exclude`` (e.g. an overlay folder inside ``folder``) are left out.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def default_threshold(weights_dir: Path | None = None) -> float:
    """The recommended threshold from ``metrics.json`` (rounded as the app rounds it), else 0.5."""
    path = Path(weights_dir or config.WEIGHTS_DIR) / config.METRICS_FILE
    try:
        return recommended_threshold(json.loads(path.read_text()))
    except FileNotFoundError:
        return config.DEFAULT_THRESHOLD
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"warning: could not read the recommended threshold from {path} ({err}); "
              f"using {config.DEFAULT_THRESHOLD}", file=sys.stderr)
        return config.DEFAULT_THRESHOLD


def read_file(path: Path) -> bytes:
    """The file's bytes; ``OSError`` with a reader-facing message when it can't or shouldn't be read.

    A file above the upload limit is refused from its size, without reading it into memory.
    """
    size = path.stat().st_size
    if size > config.MAX_UPLOAD_MB * 1024 * 1024:
        raise OSError(f"The file is {size / 2**20:,.0f} MB; pneumo reads files up to "
                      f"{config.MAX_UPLOAD_MB} MB. Export a smaller copy (one image, PNG or JPEG).")
    return path.read_bytes()


def unreadable(name: str, err: OSError) -> Reading:
    """A Reading for a file that could not even be opened."""
    message = str(err) if not err.strerror else f"The file could not be opened ({err.strerror})."
    return Reading(name=name, digest="", error=message)


def cam_path(cams_dir: Path, name: str) -> Path:
    """Where the overlay of the image at relative path ``name`` goes (keeps subfolders and the
    full file name, so ``a.png`` and ``a.jpg`` don't collide)."""
    return cams_dir / (name + CAM_SUFFIX)


def write_overlay(path: Path, reading: Reading, method: str) -> None:
    """Save the ``method`` heat map blended over the reading's display image as a PNG."""
    from PIL import Image

    from pneumo.explain import overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(reading.display, reading.cams[method])).save(path, format="PNG")


def csv_row(reading: Reading, threshold: float, cam_file: str = "") -> dict[str, str]:
    """One CSV row; numbers as text with fixed precision, empty cells for what doesn't apply."""
    return {
        "file": reading.name,
        "probability_pneumonia": "" if reading.probability is None else f"{reading.probability:.6f}",
        "decision": decide(reading.probability, threshold) if reading.ok else NOT_READ,
        "threshold": f"{threshold:g}",
        "ood_warning": reading.ood_warning or "",
        "error": reading.error or "",
        "notes": "; ".join(reading.notes),
        "cam_file": cam_file,
    }


def summary(rows: list[dict[str, str]], threshold: float, out: Path) -> str:
    """One line: how many files were read, decisions, errors, OOD flags, where the CSV is."""
    read = [r for r in rows if not r["error"]]
    positive = sum(r["decision"] == config.CLASS_NAMES[1] for r in read)
    flagged = sum(bool(r["ood_warning"]) for r in read)
    return (f"Read {len(read)} of {len(rows)} files: {positive} {config.CLASS_NAMES[1]}, "
            f"{len(read) - positive} {config.CLASS_NAMES[0]} at threshold {threshold:g}; "
            f"{len(rows) - len(read)} unreadable; {flagged} not like a chest X-ray -> {out}")


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be between 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.predict",
        description="Read every chest X-ray under FOLDER and write P(pneumonia) per file to a CSV.")
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of images (recursive)")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--cams", type=Path, metavar="DIR",
                        help="also write a Grad-CAM overlay PNG per readable image to DIR")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="decision threshold on P(pneumonia) (default: the recommended "
                             "threshold in metrics.json beside the model, else 0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=16,
                        help="files read and held in memory at a time (default 16)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    paths = find_images(args.folder, exclude=args.cams)
    if not paths:
        print(f"No supported images ({', '.join(SUPPORTED_EXTENSIONS)}) under {args.folder}.",
              file=sys.stderr)
        return 1
    threshold = args.threshold if args.threshold is not None else default_threshold()

    from tqdm import tqdm

    from pneumo import ood
    from pneumo.explain import METHODS, CamExplainer
    from pneumo.model import load_model
    from pneumo.reader import read_batch

    try:
        explainer = CamExplainer(load_model())
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    detector = ood.load_detector()
    if detector is None:
        print(f"note: no {ood.OOD_FILE} beside the model; the out-of-distribution check is off.",
              file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    with args.out.open("w", newline="", encoding="utf-8") as f, \
            tqdm(total=len(paths), unit="img", desc="Reading") as bar:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            names = [p.relative_to(args.folder).as_posix() for p in chunk]
            files, failed = [], {}
            for name, path in zip(names, chunk):
                try:
                    files.append((name, read_file(path)))
                except OSError as err:
                    failed[name] = unreadable(name, err)
            readings = {r.name: r for r in read_batch(files, explainer, ood_check=detector,
                                                      batch_size=args.batch_size)}
            del files
            readings.update(failed)
            for name in names:
                reading = readings[name]
                cam_file = ""
                if args.cams is not None and reading.ok:
                    target = cam_path(args.cams, name)
                    write_overlay(target, reading, METHODS[0])
                    cam_file = target.as_posix()
                rows.append(csv_row(reading, threshold, cam_file))
                writer.writerow(rows[-1])
            f.flush()
            bar.update(len(chunk))
    print(summary(rows, threshold, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
