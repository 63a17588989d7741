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
Only ``--batch-size`` files are held in memory at a time and the CSV is written as the run goes
(Parquet instead when ``--out`` ends in ``.parquet``; :class:`pneumo.cli.rows.RowSink`).
An unreadable file gets a row with an error message; the run goes on. ``--resume`` keeps the rows
already in the output and reads only the files it lacks.

``--engine ray`` reads on Ray Data instead (:mod:`pneumo.cli.ray_engine`: a Ray started for the
run on this machine, or the cluster at ``--address``; the same rows). Ray is an optional extra
and is imported, let alone started, only when ``--engine ray`` is asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pneumo.cli import rows
from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
from pneumo.cli.rows import (  # noqa: F401 (the row format is this program's; kept importable here)
    CAM_SUFFIX,
    COLUMNS,
    CSV_FORMATS,
    Models,
    RowSink,
    Settings,
    cam_path,
    csv_row,
    default_threshold,
    done_files,
    read_chunk,
    relative_name,
    summary,
    unreadable,
    write_overlay,
)
from pneumo.evaluation import artifacts
from pneumo.io.files import find_images
from pneumo.io.images import SUPPORTED_EXTENSIONS
from pneumo.reading import reader

NOT_READ = reader.NOT_READ
ENGINES = ("local", "ray")


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
    parser.add_argument("--out", type=Path, required=True,
                        help="CSV file to write (Parquet when it ends in .parquet)")
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
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in OUT and read only the files it has no row "
                             "for (after an interrupted run)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="'local' (default): read in this process; 'ray': read on Ray Data, "
                             "on a Ray started for the run (this machine only) or the cluster at "
                             "--address (needs the cluster extra: pip install -e .[cluster])")
    parser.add_argument("--address", default=None,
                        help="with --engine ray: the Ray cluster to run on (default: RAY_ADDRESS "
                             "if set, else a local Ray started for this run and stopped after)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="with --engine ray: reading workers, one CPU each, each with its own "
                             "copy of the models (default: one per CPU of the cluster)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.engine != "ray" and (args.address or args.workers):
        parser.error("--address and --workers go with --engine ray")
    if args.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            parser.error("--engine ray needs Ray, which is not installed: "
                         "pip install -e .[cluster] (or pip install -r requirements-cluster.txt)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    started = time.time()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    paths = find_images(args.folder, exclude=args.cams)
    if not paths:
        print(f"No supported images ({', '.join(SUPPORTED_EXTENSIONS)}) under {args.folder}.",
              file=sys.stderr)
        return 1
    if args.resume:
        done = done_files(args.out)
        paths = [p for p in paths if relative_name(p, args.folder) not in done]
        if done:
            print(f"note: resuming: {len(done)} files already in {args.out} are skipped.",
                  file=sys.stderr)
        if not paths:
            print(f"Every file under {args.folder} is already in {args.out}; nothing to read.")
            return 0
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
    if calibration is not None:
        print(f"note: {calibration.banner}; probabilities and the default threshold are the "
              "site's.", file=sys.stderr)
    settings = Settings(folder=args.folder, threshold=threshold, calibration=calibration,
                        batch_size=args.batch_size, auto_correct=args.auto_correct, cams=args.cams)

    if args.engine == "ray":
        from pneumo.cli import ray_engine

        try:
            sink = ray_engine.run(paths, settings, args.out, resume=args.resume,
                                  address=args.address, workers=args.workers, started=started)
        except ray_engine.EngineError as err:
            print(err, file=sys.stderr)
            return 1
    else:
        from pneumo.audit import AuditError

        try:
            models = load_models()
        except (FileNotFoundError, AuditError) as err:
            print(err, file=sys.stderr)
            return 1
        sink = read_here(paths, settings, models, args.out, resume=args.resume, started=started,
                         ready=time.time())
    print(summary(sink.kept + sink.written, threshold, args.out))
    print(f"This run: {sink.timing()} ({args.engine} engine)")
    return 0


def load_models() -> Models:
    """The in-process engine's models (each check with a note on stderr when it is off)."""
    return rows.load_models(lambda: load_segmenter(), lambda: load_quality_checker(),
                            lambda: load_scope_check())  # this module's names (tests replace them)


def read_here(paths: list[Path], settings: Settings, models: Models, out: Path, resume: bool = False,
              started: float | None = None, ready: float | None = None) -> RowSink:
    """The in-process engine: chunk by chunk in this process, the rows written as it goes.
    ``started``, ``ready``: when the run started and its models were loaded (``time.time()``)."""
    from tqdm import tqdm

    timing = {} if started is None else {"started": started}
    with RowSink(out, resume=resume, ready=ready, **timing) as sink, \
            tqdm(total=len(paths), unit="img", desc="Reading") as bar:
        for start in range(0, len(paths), settings.batch_size):
            chunk = paths[start:start + settings.batch_size]
            sink.write(read_chunk(chunk, settings, models))
            bar.update(len(chunk))
    return sink


if __name__ == "__main__":
    sys.exit(main())
