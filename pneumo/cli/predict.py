"""Batch prediction over a folder: ``python -m pneumo.predict FOLDER --out results.csv``.

Options: ``--cams DIR`` (a Grad-CAM overlay PNG per image), ``--threshold T`` (default: the
recommended threshold in ``metrics.json`` beside the model, else 0.5), ``--batch-size N``,
``--auto-correct`` (score the corrected copy of an image that looks turned, flipped or
inverted, instead of the image as found; the ``corrected`` column says what was undone).

The folder is walked recursively for supported images, which are read exactly as the app reads
uploads (:func:`pneumo.reading.reader.read_batch`: same decoding and preprocessing, the same calibrated
model, the out-of-distribution check, and the lung fields when ``weights/lungs.keras`` exists:
``gradcam_in_lungs`` is the share of the Grad-CAM heat map inside the lungs, ``lung_warning``
says when no plausible lung fields were found; and the image-quality check
(:mod:`pneumo.models.quality`): ``quality`` lists its finding codes, e.g. ``rot90; low_resolution``).
Only ``--batch-size`` files are held in memory at a time and the CSV is written as the run goes.
An unreadable file gets a row with an error message; the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumo import config
from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
from pneumo.evaluation import artifacts
from pneumo.io.files import find_images, read_file
from pneumo.io.images import SUPPORTED_EXTENSIONS
from pneumo.reading import reader
from pneumo.reading.reader import RESULT_COLUMNS, Reading, result_row

_CAM_AFTER = RESULT_COLUMNS.index("notes") + 1  # the heat-map file follows the notes
COLUMNS = RESULT_COLUMNS[:_CAM_AFTER] + ("cam_file",) + RESULT_COLUMNS[_CAM_AFTER:]
NOT_READ = reader.NOT_READ
CAM_SUFFIX = ".gradcam.png"


def default_threshold(weights_dir: Path | None = None) -> float:
    """The recommended threshold from ``metrics.json`` (rounded as the app rounds it), else 0.5."""
    path = artifacts.weights_file(config.METRICS_FILE, weights_dir)
    try:
        return artifacts.recommended_threshold(weights_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"warning: could not read the recommended threshold from {path} ({err}); "
              f"using {config.DEFAULT_THRESHOLD}", file=sys.stderr)
        return config.DEFAULT_THRESHOLD


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

    from pneumo.models.explain import overlay

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(reading.display, reading.cams[method])).save(path, format="PNG")


CSV_FORMATS = {"probability_pneumonia": "{:.6f}", "threshold": "{:g}",
               "gradcam_in_lungs": "{:.4f}", "bundled_probability": "{:.6f}",
               "older_score": "{:.4f}"}


def csv_row(reading: Reading, threshold: float, cam_file: str = "",
            calibration: str = "") -> dict[str, str]:
    """:func:`pneumo.reading.reader.result_row` as CSV text: numbers with fixed precision, empty cells
    for what doesn't apply, and the overlay's path."""
    row = {**result_row(reading, threshold, calibration), "cam_file": cam_file}
    return {k: "" if row[k] is None else CSV_FORMATS.get(k, "{}").format(row[k]) for k in COLUMNS}


def summary(rows: list[dict[str, str]], threshold: float, out: Path) -> str:
    """One line: files read, decisions by trust state, errors, flags, where the CSV is."""
    read = [r for r in rows if not r["error"]]
    count = {word: sum(r["decision"] == word for r in read)
             for word in (*config.CLASS_NAMES, "DOUBTFUL", "OUT OF SCOPE")}
    no_lungs = sum(bool(r.get("lung_warning")) for r in read)
    lungs = f"; {no_lungs} without plausible lung fields" if no_lungs else ""
    found = sum(bool(r.get("quality")) for r in read)
    fixed = sum(bool(r.get("corrected")) for r in read)
    checks = (f"; {found} with image-quality findings" + (f" ({fixed} read corrected)" if fixed
                                                          else "")) if found else ""
    flagged = sum(bool(r["ood_warning"]) for r in read)
    return (f"Read {len(read)} of {len(rows)} files: {count[config.CLASS_NAMES[1]]} "
            f"{config.CLASS_NAMES[1]}, {count[config.CLASS_NAMES[0]]} {config.CLASS_NAMES[0]} at "
            f"threshold {threshold:g}, {count['DOUBTFUL']} doubtful, {count['OUT OF SCOPE']} out "
            f"of scope ({flagged} not like a chest X-ray); {len(rows) - len(read)} unreadable"
            f"{lungs}{checks} -> {out}")


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
    parser.add_argument("--auto-correct", action="store_true",
                        help="for an image that looks turned, flipped or inverted, score the "
                             "corrected copy instead (the 'corrected' column says what was "
                             "undone); off by default")
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
    from pneumo.reading import site

    status = site.load()
    if status.message:
        print(f"note: {status.message}", file=sys.stderr)
    calibration = status.calibration
    if args.threshold is not None:
        threshold = args.threshold
    elif calibration is not None:  # the site's own operating point, on its probability scale
        threshold = artifacts.round_threshold(calibration.recommended)
    else:
        threshold = default_threshold()
    calibration_name = "" if calibration is None else calibration.label
    if calibration is not None:
        print(f"note: {calibration.banner}; probabilities and the default threshold are the "
              "site's.", file=sys.stderr)

    from tqdm import tqdm

    from pneumo.models import ood
    from pneumo.models.explain import METHODS
    from pneumo.models.runtime import load_explainer
    from pneumo.reading.reader import read_batch, read_corrected

    try:
        explainer = load_explainer()
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    detector = ood.load_detector()
    if detector is None:
        print(f"note: no {config.OOD_FILE} beside the model; the out-of-distribution check is off.",
              file=sys.stderr)
    segmenter = load_segmenter()
    checker = load_quality_checker()
    scope_check = load_scope_check()

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
                                                      batch_size=args.batch_size,
                                                      segmenter=segmenter,
                                                      quality_checker=checker,
                                                      scope_check=scope_check)}
            del files
            if args.auto_correct:
                readings.update((r.name, r) for r in read_corrected(
                    readings.values(), explainer, ood_check=detector, segmenter=segmenter,
                    batch_size=args.batch_size, scope_check=scope_check))
            readings.update(failed)
            for name in names:
                reading = site.calibrate_reading(readings[name], calibration)
                cam_file = ""
                if args.cams is not None and reading.ok:
                    target = cam_path(args.cams, name)
                    write_overlay(target, reading, METHODS[0])
                    cam_file = target.as_posix()
                rows.append(csv_row(reading, threshold, cam_file, calibration_name))
                writer.writerow(rows[-1])
            f.flush()
            bar.update(len(chunk))
    print(summary(rows, threshold, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
