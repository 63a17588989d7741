"""The batch reading's rows, shared by both engines of ``python -m pneumo.predict`` (the
in-process one and the Ray one, :mod:`pneumo.cli.ray_engine`): how a chunk of files becomes CSV
rows (:func:`read_chunk`, so both engines read a file the same way), and where the rows go
(:class:`RowSink`: a CSV, or Parquet when the file name ends in ``.parquet``; a resumed run
keeps the rows already there). Not a program itself.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumo import config
from pneumo.evaluation import artifacts
from pneumo.io.files import read_file
from pneumo.reading import reader
from pneumo.reading.reader import RESULT_COLUMNS, Reading, result_row

if TYPE_CHECKING:
    from pneumo.reading.site import SiteCalibration

_CAM_AFTER = RESULT_COLUMNS.index("notes") + 1  # the heat-map file follows the notes
COLUMNS = RESULT_COLUMNS[:_CAM_AFTER] + ("cam_file",) + RESULT_COLUMNS[_CAM_AFTER:]
CAM_SUFFIX = ".gradcam.png"
PARQUET_SUFFIX = ".parquet"

CSV_FORMATS = {"probability_pneumonia": "{:.6f}", "threshold": "{:g}",
               "gradcam_in_lungs": "{:.4f}", "bundled_probability": "{:.6f}",
               "older_score": "{:.4f}"}


def csv_row(reading: Reading, threshold: float, cam_file: str = "",
            calibration: str = "") -> dict[str, str]:
    """:func:`pneumo.reading.reader.result_row` as CSV text: numbers with fixed precision, empty cells
    for what doesn't apply, and the overlay's path."""
    row = {**result_row(reading, threshold, calibration), "cam_file": cam_file}
    return {k: "" if row[k] is None else CSV_FORMATS.get(k, "{}").format(row[k]) for k in COLUMNS}


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


def relative_name(path: Path, folder: Path) -> str:
    """The file column: the path relative to the folder read, with forward slashes."""
    return Path(path).relative_to(folder).as_posix()


@dataclass(frozen=True)
class Settings:
    """How to read (the same for every file and every worker; picklable, so a Ray worker gets
    it as it is)."""

    folder: Path
    threshold: float
    calibration: SiteCalibration | None = None  # the site's, None: the bundled one
    batch_size: int = 16
    auto_correct: bool = False
    cams: Path | None = None  # write an overlay per readable image here

    @property
    def calibration_name(self) -> str:
        return "" if self.calibration is None else self.calibration.label


@dataclass
class Models:
    """The models a reading uses (:func:`pneumo.models.runtime.load_explainer`,
    :func:`pneumo.models.ood.load_detector` and :mod:`pneumo.cli.loaders`'s); None: that check is off."""

    explainer: Any
    detector: Any = None
    segmenter: Any = None
    checker: Any = None
    scope_check: Any = None
    audit: Any = None  # a ReadingRecorder: one audit record per reading (pneumo.audit)


class ReadingRecorder:
    """One audit record per reading a command line makes (issue #24): the operating-system user
    and host, the file's SHA-256 (never its name), probability, trust state and decision."""

    def __init__(self, store=None):
        from pneumo import audit

        self.actor = audit.Actor.from_os()
        self.store = store if store is not None else audit.AuditStore(audit.load_settings().url)

    def __call__(self, readings: Sequence[Reading], threshold: float) -> None:
        read = [r for r in readings if r.ok]
        if read:
            self.store.record_readings(self.actor, read, threshold)


def load_models(load_segmenter=None, load_quality_checker=None, load_scope_check=None) -> Models:
    """Every model a reading uses, each check with a note on stderr when it is off, and the audit
    trail's recorder; raises ``FileNotFoundError`` (saying how to train one) when there is no
    classifier, :class:`pneumo.audit.AuditError` when the audit database cannot be opened. The
    loaders default to :mod:`pneumo.cli.loaders`'s."""
    from pneumo.cli import loaders
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer

    explainer = load_explainer()
    detector = ood.load_detector()
    if detector is None:
        print(f"note: no {config.OOD_FILE} beside the model; the out-of-distribution check is off.",
              file=sys.stderr)
    return Models(explainer=explainer, detector=detector,
                  segmenter=(load_segmenter or loaders.load_segmenter)(),
                  checker=(load_quality_checker or loaders.load_quality_checker)(),
                  scope_check=(load_scope_check or loaders.load_scope_check)(),
                  audit=ReadingRecorder())


def read_chunk(paths: Sequence[Path], settings: Settings, models: Models) -> list[dict[str, str]]:
    """Read a chunk of files (at most ``settings.batch_size`` are held at a time) and return their
    CSV rows, in order: an unreadable file gets a row with its error, the chunk goes on."""
    from pneumo.models.explain import METHODS
    from pneumo.reading import site

    names = [relative_name(p, settings.folder) for p in paths]
    files, failed = [], {}
    for name, path in zip(names, paths):
        try:
            files.append((name, read_file(path)))
        except OSError as err:
            failed[name] = unreadable(name, err)
    readings = {r.name: r for r in reader.read_batch(
        files, models.explainer, ood_check=models.detector, batch_size=settings.batch_size,
        segmenter=models.segmenter, quality_checker=models.checker,
        scope_check=models.scope_check)}
    del files
    if settings.auto_correct:
        readings.update((r.name, r) for r in reader.read_corrected(
            readings.values(), models.explainer, ood_check=models.detector,
            segmenter=models.segmenter, batch_size=settings.batch_size,
            scope_check=models.scope_check))
    readings.update(failed)
    shown = {name: site.calibrate_reading(readings[name], settings.calibration) for name in names}
    if models.audit is not None:  # recorded as the CSV gives them, before they are written
        models.audit([shown[name] for name in names], settings.threshold)
    rows = []
    for name in names:
        reading = shown[name]
        cam_file = ""
        if settings.cams is not None and reading.ok:
            target = cam_path(settings.cams, name)
            write_overlay(target, reading, METHODS[0])
            cam_file = target.as_posix()
        rows.append(csv_row(reading, settings.threshold, cam_file, settings.calibration_name))
    return rows


def is_parquet(out: Path) -> bool:
    return Path(out).suffix.lower() == PARQUET_SUFFIX


def read_rows(out: Path) -> list[dict[str, str]]:
    """The rows already in a results file (CSV or Parquet; a CSV's unfinished last line is no
    row); none when it does not exist."""
    out = Path(out)
    if not out.exists():
        return []
    if is_parquet(out):
        import pyarrow.parquet as pq

        return pq.read_table(out).to_pylist()
    with out.open(newline="", encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):  # half a row from a run stopped while writing: not done
        text = text[:text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text, newline="")))


def done_files(out: Path) -> set[str]:
    """The files a results file has a row for (what a resumed run skips)."""
    return {row["file"] for row in read_rows(out)}


def _drop_partial_line(path: Path) -> None:
    """Cut a CSV back to its last whole line (a run stopped while writing leaves half a row)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


@dataclass
class RowSink:
    """Where the rows go as a run reads: a CSV written (and flushed) chunk by chunk, or a Parquet
    file (``.parquet``: one row group per chunk, in a temporary file beside it that replaces
    ``out`` when the run ends, so ``out`` is always a whole file). With ``resume``, the rows
    already in ``out`` stay (the CSV is appended to; the Parquet rewritten with them first).

    Every column is the CSV's text, in :data:`COLUMNS`, so both formats hold the same rows.
    ``marks`` records (time, rows so far) after every write, for the rate in the summary.
    """

    out: Path
    resume: bool = False
    kept: list[dict[str, str]] = field(default_factory=list)  # rows already there (resume)
    written: list[dict[str, str]] = field(default_factory=list)  # rows of this run
    marks: list[tuple[float, int]] = field(default_factory=list)
    started: float = field(default_factory=time.time)  # when the engine started (wall clock)
    ready: float | None = None  # when the models were loaded (the Ray engine: in its first worker)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.resume and not is_parquet(self.out):
            _drop_partial_line(self.out)
        self.kept = read_rows(self.out) if self.resume else []
        if is_parquet(self.out):
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._schema = pa.schema([(c, pa.string()) for c in COLUMNS])
            self._partial = self.out.with_name(self.out.name + ".partial")
            self._writer = pq.ParquetWriter(self._partial, self._schema)
            if self.kept:
                self._write_parquet(self.kept)
            self._file = None
        else:
            append = self.resume and self.out.exists() and self.out.stat().st_size > 0
            self._file = self.out.open("a" if append else "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
            if not append:
                self._csv.writeheader()

    def _write_parquet(self, rows: Iterable[dict[str, str]]) -> None:
        import pyarrow as pa

        rows = list(rows)
        self._writer.write_table(pa.Table.from_pylist(
            [{c: row.get(c, "") for c in COLUMNS} for row in rows], schema=self._schema))

    def write(self, rows: list[dict[str, str]]) -> None:
        if self._file is not None:
            self._csv.writerows(rows)
            self._file.flush()
        elif rows:
            self._write_parquet(rows)
        self.written.extend(rows)
        self.marks.append((time.time(), len(self.written)))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self._writer.close()
            os.replace(self._partial, self.out)

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None or exc[0] is None:
            self.close()
        else:  # a failed Parquet run leaves ``out`` as it was
            self._writer.close()

    def timing(self) -> str:
        """This run's time, its start-up (to the models loaded) and the reading rate after it."""
        if not self.marks:
            return "no files read"
        last_time, rows = self.marks[-1]
        ready = self.ready if self.ready is not None else self.started
        rate = rows / (last_time - ready) if last_time > ready else float("nan")
        return (f"{rows} files in {last_time - self.started:.1f} s: start-up (to the models "
                f"loaded) {ready - self.started:.1f} s, then {rate:.2f} images/s")


__all__ = ["COLUMNS", "CAM_SUFFIX", "CSV_FORMATS", "Models", "RowSink", "Settings", "cam_path",
           "csv_row", "load_models", "done_files", "read_chunk", "read_rows", "relative_name", "unreadable",
           "write_overlay"]


def default_threshold(weights_dir: Path | None = None) -> float:
    """The recommended threshold from ``metrics.json`` (rounded as the app rounds it), else 0.5."""
    path = artifacts.weights_file(config.METRICS_FILE, weights_dir)
    try:
        return artifacts.recommended_threshold(weights_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"warning: could not read the recommended threshold from {path} ({err}); "
              f"using {config.DEFAULT_THRESHOLD}", file=sys.stderr)
        return config.DEFAULT_THRESHOLD


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
