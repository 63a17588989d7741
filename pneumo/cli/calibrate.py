"""Site calibration CLI: ``python -m pneumo.calibrate --data FOLDER --site "Name"``.

FOLDER holds a labelled local sample in ``NORMAL/`` and ``PNEUMONIA/`` (PNG, JPEG or DICOM, any
size). Every file is read as the app reads uploads; one that cannot be read is reported and
skipped. Each readable image then goes through the app's checks; one pneumo would not answer
about (out of scope: not a chest X-ray, outside the population, no lung fields; or doubtful:
turned, flipped, inverted) is reported and left out of the fit. The rest are scored with the
bundled model, the probability calibration is
refitted on them and operating points are proposed (:mod:`pneumo.reading.site`), and ``site.json`` is
written to the site folder (``--site-dir``, else ``$PNEUMO_SITE_DIR``, else ``site/`` in the
project). The file holds numbers only: no image, no file name.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pneumo import config
from pneumo.reading import site


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.calibrate",
        description="Calibrate pneumo's probability and thresholds on a labelled local sample.")
    parser.add_argument("--data", type=Path, required=True, metavar="FOLDER",
                        help="folder with NORMAL/ and PNEUMONIA/ subfolders of images")
    parser.add_argument("--site", required=True, metavar="NAME",
                        help='the site\'s name as the app shows it, e.g. "St Mary\'s radiology"')
    parser.add_argument("--site-dir", type=Path, default=None, metavar="DIR",
                        help=f"where site.json goes (default: ${config.SITE_DIR_ENV}, else "
                             f"{config.SITE_DIR_DEFAULT})")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="images read and held in memory at a time (default 16)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def _print_skipped(report: site.SampleReport | None) -> None:
    for name, why in report.skipped if report is not None else []:
        print(f"skipped {name}: {why}", file=sys.stderr)
    left_out = report.left_out if report is not None else []
    for name, why in left_out:
        print(f"left out {name}: {why}", file=sys.stderr)
    if left_out:
        print(f"{len(left_out)} image(s) left out of the fit: pneumo would not answer about them "
              "(if many are called older than the population, this site's patients may not be "
              "the children pneumo was built for).", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 written, 1 nothing written)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    try:
        items = site.folder_items(args.data)
    except site.SiteSampleError as err:
        print(err, file=sys.stderr)
        return 1
    from pneumo import audit

    try:  # the change is recorded (issue #24): no calibration without the audit trail
        store, actor = audit.AuditStore(audit.load_settings().url), audit.Actor.from_os()
    except audit.AuditError as err:
        print(err, file=sys.stderr)
        return 1
    previous = site.load(args.site_dir).calibration

    from tqdm import tqdm

    from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
    from pneumo.models import ood
    from pneumo.models.classifier import Predictor, load_model
    from pneumo.models.runtime import load_explainer

    model_path = config.weights_path(config.MODEL_FILE)
    try:
        predictor = Predictor(load_model(model_path))
        screen = site.trust_screen(load_explainer(model_path), ood.load_detector(), load_segmenter(),
                                   load_quality_checker(), load_scope_check())
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    with tqdm(total=len(items), unit="img", desc="Reading", file=sys.stderr) as bar:
        done = [0]

        def progress(fraction: float, text: str) -> None:
            target = round(fraction * len(items))
            bar.update(max(target - done[0], 0))
            done[0] = max(done[0], target)

        try:
            calibration, report, path = site.calibrate(
                items, args.site, predictor.predict, site.model_fingerprint(model_path),
                folder=args.site_dir, batch_size=args.batch_size, progress=progress, screen=screen,
                set_by="command line")
        except site.SiteSampleError as err:
            report = err.report
            _print_skipped(report)
            print(f"No site calibration written: {err}", file=sys.stderr)
            return 1
    _print_skipped(report)
    try:
        store.record(actor, audit.SITE_CALIBRATION, old=audit.site_summary(previous),
                     new=audit.site_summary(calibration))
    except audit.AuditError as err:
        print(f"warning: {err} (the site calibration was written)", file=sys.stderr)
    print("\n".join(site.summary_lines(calibration, report)))
    if problem := site.acceptance_problem(calibration):
        print(f"warning: the app would refuse this sample: {problem.replace(' Nothing was changed.', '')}",
              file=sys.stderr)
    print(f"Written to {path}. The app uses it from its next page load.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
