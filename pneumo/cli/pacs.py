"""Batch reading from the PACS: ``python -m pneumo.pacs --since 2026-12-01 --out results.csv``.

Options: ``--url URL`` (the DICOMweb service; else ``PNEUMO_PACS_URL`` or ``[pacs] url`` in
``.streamlit/secrets.toml``, :mod:`pneumo.io.pacs`), ``--until DATE``, ``--patient-id ID``,
``--accession NUMBER``, ``--send`` (store the results back in each study: a DICOM SR per read
image and, for a trusted reading at or above the threshold, a Secondary Capture of its heat
map, :mod:`pneumo.reading.dicom_results`), ``--auto-correct`` (a film that looks turned, flipped
or inverted is read from pneumo's corrected copy, as ``python -m pneumo.predict --auto-correct``;
the CSV row and the SR sent are that reading, the one result), ``--batch-size N``.

Every frontal chest image (CR or DX, PA or AP) of the matching studies is retrieved in memory
and read exactly as an uploaded file, with the same checks as ``python -m pneumo.predict``
(:func:`pneumo.reading.pacs_reading.read_instances`: retrieval, decoding and the models overlap;
a file's bytes are dropped once decoded). The threshold is the department's: the site
calibration's recommended one when a site file exists, else the recommended threshold beside
the model; there is no per-run threshold. The CSV has ``python -m pneumo.predict``'s columns,
identified by ``study_instance_uid`` and ``sop_instance_uid`` instead of a file name, and ``sent``
(what was stored back, or why not). No patient name, id or accession number is written to the
CSV or printed; nothing pulled is written to disk.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from pneumo import audit
from pneumo.cli import loaders
from pneumo.cli import rows as row_format
from pneumo.io import pacs
from pneumo.reading.pacs_reading import PacsReading
from pneumo.reading.pacs_results import Sender
from pneumo.reading.reader import Reading

IDENTITY = ("study_instance_uid", "sop_instance_uid")
COLUMNS = IDENTITY + tuple(c for c in row_format.COLUMNS if c not in ("file", "cam_file")) + ("sent",)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a date is written YYYY-MM-DD, got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.pacs",
        description="Read every frontal chest X-ray of the matching PACS studies and write "
                    "P(pneumonia) per image to a CSV; optionally store the results back.")
    parser.add_argument("--url", help="the PACS's DICOMweb address (default: PNEUMO_PACS_URL, "
                                      "else [pacs] url in .streamlit/secrets.toml)")
    parser.add_argument("--since", type=_date, help="first study date, YYYY-MM-DD")
    parser.add_argument("--until", type=_date, help="last study date, YYYY-MM-DD")
    parser.add_argument("--patient-id", default="", help="only this patient's studies")
    parser.add_argument("--accession", default="", help="only the study with this accession number")
    parser.add_argument("--send", action="store_true",
                        help="store the results in each study: a DICOM SR per read image and a "
                             "heat-map Secondary Capture per trusted reading at or above the "
                             "threshold")
    parser.add_argument("--auto-correct", action="store_true",
                        help="for an image that looks turned, flipped or inverted, read pneumo's "
                             "corrected copy instead: the CSV row, the audit record and the SR "
                             "sent are its reading (the 'corrected' column and the SR say what "
                             "was undone)")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--batch-size", type=_positive_int, default=16,
                        help="images read in one batch of the models (default 16); the next "
                             "batch is retrieved meanwhile, a few files at a time")
    args = parser.parse_args(argv)
    if args.since is None and not (args.patient_id or args.accession):
        parser.error("give --since (or --patient-id or --accession): pneumo does not read a "
                     "whole PACS")
    if args.since and args.until and args.until < args.since:
        parser.error("--until is before --since")
    return args


class PacsAudit:
    """The audit trail of a PACS run (issue #24): the operating-system user and host; the search
    with its filters (patient id and accession included: the trail must say whose records were
    opened), each study retrieved, each reading, each result stored."""

    def __init__(self):
        from pneumo.cli.rows import ReadingRecorder

        self.readings = ReadingRecorder()
        self.store, self.actor = self.readings.store, self.readings.actor

    def record(self, action: str, **values) -> None:
        self.store.record(self.actor, action, **values)


def row(reading: Reading, ref: pacs.InstanceRef, threshold: float, calibration: str,
        sent: str) -> dict[str, str]:
    cells = row_format.csv_row(reading, threshold, "", calibration)
    return {"study_instance_uid": ref.study_instance_uid, "sop_instance_uid": ref.sop_instance_uid,
            **{k: cells[k] for k in COLUMNS if k in cells}, "sent": sent}


def newly_retrieved(chunk: Sequence[PacsReading], recorded: set[str]) -> list[str]:
    """The studies, in order, with an instance of ``chunk`` the PACS sent and no retrieval
    recorded yet (a study none of whose instances came is never recorded as retrieved)."""
    return list(dict.fromkeys(item.ref.study_instance_uid for item in chunk
                              if item.retrieved and item.ref.study_instance_uid not in recorded))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    try:  # the audit trail first: nothing is searched or read without it
        trail = PacsAudit()
    except audit.AuditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    filters = {"since": str(args.since or ""), "until": str(args.until or ""),
               "patient_id": args.patient_id or "", "accession": args.accession or ""}
    try:
        client = pacs.connect(args.url)
        studies = client.search_studies(args.since, args.until, args.patient_id, args.accession)
    except pacs.PacsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    trail.record(audit.PACS_SEARCH, new={**filters, "studies_found": len(studies)})
    images: list[pacs.InstanceRef] = []
    for study in studies:
        try:
            images += client.frontal_images(study.study_instance_uid)
        except pacs.PacsNoImages as err:
            print(f"note: {err}", file=sys.stderr)
        except pacs.PacsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if not images:
        print(f"No frontal chest image in the {len(studies)} matching studies.", file=sys.stderr)
        return 1

    from pneumo.reading import site

    status = site.load()
    if status.message:
        print(f"note: {status.message}", file=sys.stderr)
    calibration = status.calibration
    if calibration is not None:
        from pneumo.evaluation import artifacts

        threshold = artifacts.round_threshold(calibration.recommended)
        print(f"note: {calibration.banner}; probabilities and the threshold are the site's.",
              file=sys.stderr)
    else:
        threshold = row_format.default_threshold()
    calibration_name = "" if calibration is None else calibration.label

    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer
    from pneumo.reading.pacs_reading import read_instances

    try:
        explainer = load_explainer()
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    detector = ood.load_detector()
    segmenter = loaders.load_segmenter()
    checker = loaders.load_quality_checker()
    scope_check = loaders.load_scope_check()
    sender = Sender(client, threshold, calibration_name,
                    record=lambda new: trail.record(audit.PACS_SEND, new=new)) if args.send else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    failures = 0
    retrieved: set[str] = set()  # studies with a PACS_RETRIEVE record
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for chunk in read_instances(client, images, explainer, batch_size=args.batch_size,
                                    ood_check=detector, segmenter=segmenter,
                                    quality_checker=checker, scope_check=scope_check,
                                    auto_correct=args.auto_correct):
            for study in newly_retrieved(chunk, retrieved):  # once each, after retrieval
                trail.record(audit.PACS_RETRIEVE, new={"study_instance_uid": study})
                retrieved.add(study)
            shown = [site.calibrate_reading(item.reading, calibration) for item in chunk]
            trail.readings(shown, threshold)
            for item, reading in zip(chunk, shown):
                sent = ""
                if sender is not None and reading.ok and item.header is not None:
                    try:
                        sent = sender.send(item.header, reading)
                    except pacs.PacsError as err:
                        sent, failures = f"not sent: {err}", failures + 1
                rows.append(row(reading, item.ref, threshold, calibration_name, sent))
                writer.writerow(rows[-1])
            f.flush()
    line = row_format.summary(rows, threshold, args.out).replace(" files:", " images:", 1)
    print(f"{len(studies)} studies. {line}")
    if sender is not None:
        stored = sum(r["sent"].startswith("SR") for r in rows)
        overlays = sum(r["sent"] == "SR+SC" for r in rows)
        print(f"Stored {stored} SR and {overlays} heat maps in the PACS"
              + (f"; {failures} could not be stored." if failures else "."))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
