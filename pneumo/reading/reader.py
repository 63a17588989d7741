"""Reading a batch of uploaded files: decode each once, then one batched model pass for all.

Shared by the app and the batch CLI. A bad file becomes a Reading with an ``error`` message;
the rest of the batch goes on. With a lung segmenter, each readable image also gets its lung
fields and, per CAM method, the share of the heat map inside them; a segmenter failure only
drops those figures. With a quality checker (:class:`pneumo.models.quality.QualityChecker`), each
readable image also gets a :class:`~pneumo.models.quality.QualityReport` (turned, flipped, inverted,
low resolution); a checker failure only drops those findings. :func:`read_corrected` reads the
corrected copy the report offers. Nothing here writes to disk or logs header or pixel content.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pneumo import config
from pneumo.evaluation.metrics import flagged
from pneumo.io.base import ImageError, as_rgb
from pneumo.io.images import decode_image, to_model_input
from pneumo.reading import trust as trust_states
from pneumo.reading import vote as votes

if TYPE_CHECKING:
    from pneumo.io.header import HeaderFacts
    from pneumo.models.lungs import LungFields
    from pneumo.models.quality import QualityReport
    from pneumo.reading.scope import Verdict

log = logging.getLogger(__name__)

DISPLAY_MAX_SIDE = 768  # pixels: the copy kept for display and overlays

ProgressCallback = Callable[[float, str], None]


@dataclass
class Reading:
    """What pneumo says about one file."""

    name: str
    digest: str
    display: np.ndarray | None = None  # RGB uint8, at most DISPLAY_MAX_SIDE
    model_input: np.ndarray | None = None  # 224x224x3 uint8
    probability: float | None = None
    cams: dict[str, np.ndarray] = field(default_factory=dict)  # method -> 7x7 map, 0..1
    features: np.ndarray | None = None  # pooled model features, for the OOD check
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    ood_warning: str | None = None
    lungs: LungFields | None = None  # None: no segmenter, or it failed on this image
    lung_share: dict[str, float] = field(default_factory=dict)  # method -> heat-map share in lungs
    lung_warning: str | None = None  # the lung mask is implausible (kept apart from ood_warning)
    original_size: tuple[int, int] | None = None  # (height, width) of the decoded image
    quality: QualityReport | None = None  # None: no quality checker, or it failed on this batch
    corrected_from: tuple[str, ...] = ()  # quality codes pneumo undid before reading this copy
    bundled_probability: float | None = None  # the model's own, when probability is site-calibrated
    header: HeaderFacts | None = None  # a DICOM header's age, view, body part, modality
    scope: Verdict | None = None  # why the header or the population check puts it out of scope
    older_score: float | None = None  # the pixel population check's "older" probability
    judged_on_corrected: bool = False  # scope checks ran on the quality check's corrected copy
    corrected_lung_warning: str | None = None  # then: the corrected copy's lung-field warning
    member_probabilities: np.ndarray | None = None  # an ensemble's members' own (None: one model)

    @property
    def trust(self) -> trust_states.Trust:
        """The one trust state of this reading (:func:`pneumo.reading.trust.assess`)."""
        return trust_states.assess(self)

    @property
    def ok(self) -> bool:
        return self.error is None and self.probability is not None

    def vote(self, threshold: float) -> votes.Vote | None:
        """An ensemble's members' vote at ``threshold`` (:mod:`pneumo.reading.vote`); None for
        one model or an unread file."""
        return votes.vote(self.member_probabilities, threshold) if self.ok else None

    @property
    def quality_messages(self) -> list[str]:
        return list(self.quality.messages) if self.quality is not None else []

    @property
    def unreliable(self) -> bool:
        """True when the result should be greyed out: any state but trusted (doubtful or out of
        scope, :mod:`pneumo.reading.trust`)."""
        return self.ok and not self.trust.trusted

    @property
    def warnings(self) -> list[str]:
        """What a person should be told about this reading, most serious first."""
        if self.error:
            return [self.error]
        verdict = self.trust
        if verdict.state == trust_states.OUT_OF_SCOPE:  # why it is not read, and what may explain
            # it (low resolution); nothing about a film it may not be (no "inverted" on a blank)
            small = [m for c, m in (self.quality.findings if self.quality else []) if c == "low_resolution"]
            return [verdict.reason] + small + list(self.notes)
        scope = [self.scope.reason] if self.scope is not None else []
        return ([self.ood_warning] if self.ood_warning else []) + scope + self.quality_messages + (
            [self.lung_warning] if self.lung_warning else []) + list(self.notes)


def decide(probability: float, threshold: float) -> str:
    """PNEUMONIA when the probability reaches the threshold, else NORMAL."""
    return config.CLASS_NAMES[int(flagged(probability, threshold))]


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def display_copy(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Shrink for display keeping the aspect ratio (no-op for small images)."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def decode_file(name: str, data: bytes, digest: str | None = None) -> Reading:
    """Decode one file; errors become the Reading's message, never an exception.

    ``digest``: :func:`digest_of` ``data`` when the caller has it already (hashed once)."""
    reading = Reading(name=name, digest=digest or digest_of(data))
    try:
        decoded = decode_image(data, DISPLAY_MAX_SIDE)  # grey stays grey until resized
        reading.original_size = decoded.full_size
        reading.display = as_rgb(display_copy(decoded.pixels))
        reading.model_input = to_model_input(decoded.pixels)
        reading.notes = list(decoded.notes)
        reading.header = decoded.header
    except ImageError as err:
        reading.error = str(err)
    except MemoryError:
        reading.error = "The image is too large to open on this machine. Export a smaller copy."
    except Exception:  # a decoder bug must not take the batch down
        reading.error = ("pneumo could not read this file. Export it again as PNG or JPEG and "
                         "re-upload it.")
    return reading


_DECODE_POOL: ThreadPoolExecutor | None = None
_DECODE_POOL_LOCK = threading.Lock()


def _decode_pool() -> ThreadPoolExecutor:
    """The process's decoding threads, shared by every batch and session: decoders release the
    GIL, so files decode in parallel, and at most ``config.DECODE_WORKERS`` at once server-wide
    (each may use up to ``config.DECODE_MEMORY_BUDGET_MB``)."""
    global _DECODE_POOL
    with _DECODE_POOL_LOCK:
        if _DECODE_POOL is None:
            _DECODE_POOL = ThreadPoolExecutor(config.DECODE_WORKERS, thread_name_prefix="pneumo-decode")
        return _DECODE_POOL


def decode_files(files: list[tuple[str, bytes]], progress: ProgressCallback | None = None,
                 share: float = 0.3, digests: list[str] | None = None) -> list[Reading]:
    """:func:`decode_file` for every file, in parallel on the shared decoding threads; in order.

    ``progress`` is called from the calling thread (Streamlit needs that), up to ``share``.
    """
    digests = digests if digests is not None else [None] * len(files)
    futures = [_decode_pool().submit(decode_file, name, data, digest)
               for (name, data), digest in zip(files, digests)]
    readings = []
    for i, ((name, _), future) in enumerate(zip(files, futures)):
        if progress:
            progress(share * i / max(len(files), 1), f"Decoding {name}")
        readings.append(future.result())
    return readings


def _lung_fields(segmenter, images: np.ndarray) -> list[LungFields | None]:
    """The segmenter on a batch; if the batch fails, image by image; None where one fails."""
    try:
        fields = list(segmenter.fields(images))
    except Exception:  # fall back to one image at a time below
        fields = []
    if len(fields) == len(images):
        return fields
    out: list[LungFields | None] = []
    for image in images:
        try:
            out.append(segmenter.fields(image[None])[0])
        except Exception:  # a segmenter failure costs only this image's lung figures
            out.append(None)
    return out


def add_lung_fields(reading: Reading, fields: LungFields | None) -> None:
    """Store the lung fields, the heat-map share inside them per CAM method, and their warning.

    An implausible mask gives ``lung_warning`` and no shares (they would mean nothing); a map
    with no heat at all gives no share for that method.
    """
    from pneumo.models.lungs import heatmap_in_lungs

    reading.lungs, reading.lung_share, reading.lung_warning = fields, {}, None
    if fields is None:
        return
    reading.lung_warning = fields.problem
    if reading.lung_warning:
        return
    for method, cam in reading.cams.items():
        try:
            share, _ = heatmap_in_lungs(cam, fields.mask)
        except Exception:  # never let a measurement take the reading down
            continue
        if np.isfinite(share):
            reading.lung_share[method] = share


def _quality_reports(checker, chunk: list[Reading], images: np.ndarray
                     ) -> list[QualityReport | None]:
    """The checker on a batch; no findings for the whole batch if it fails (never an exception)."""
    try:
        reports = list(checker.check(images, [r.original_size for r in chunk]))
    except Exception:  # a quality-check failure costs only the quality findings
        log.warning("image-quality check failed on a batch of %d; no quality findings for it",
                    len(chunk))
        return [None] * len(chunk)
    if len(reports) != len(chunk):
        log.warning("image-quality check returned %d reports for %d images; ignored",
                    len(reports), len(chunk))
        return [None] * len(chunk)
    return reports


def read_batch(
    files: Iterable[tuple[str, bytes]],
    explainer,
    ood_check: Callable[[Reading], str | None] | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
    segmenter=None,
    quality_checker=None,
    digests: list[str] | None = None,
    scope_check: Callable[[Reading], Verdict | None] | None = None,
) -> list[Reading]:
    """Decode every file, then run probability + CAMs (and lung fields, given a segmenter:
    ``segmenter.fields(images)`` -> one ``LungFields`` per image; and the quality report, given
    a checker: ``quality_checker.check(images, original_sizes)`` -> one ``QualityReport`` per
    image) for all readable ones in batches. The OOD check runs last, so it can take the quality
    report into account (a small original is not called "not a chest X-ray" for its smoothness).
    ``digests``: the files' :func:`digest_of`, when the caller has hashed them already.
    """
    readings = decode_files(list(files), progress, digests=digests)
    check_decoded(readings, explainer, ood_check, progress, batch_size, segmenter, quality_checker,
                  scope_check)
    return readings


def check_decoded(
    readings: list[Reading],
    explainer,
    ood_check: Callable[[Reading], str | None] | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
    segmenter=None,
    quality_checker=None,
    scope_check: Callable[[Reading], Verdict | None] | None = None,
) -> None:
    """The second half of :func:`read_batch`, on readings :func:`decode_file` made: model, lung
    fields, quality, then the "not a chest X-ray" and scope checks, in batches, in place."""
    good = [r for r in readings if r.error is None]
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        if progress:
            progress(0.3 + 0.7 * start / max(len(good), 1),
                     f"Reading images {start + 1}-{start + len(chunk)} of {len(good)}")
        images = _explain_chunk(chunk, explainer, segmenter)
        if quality_checker is not None:
            for reading, report in zip(chunk, _quality_reports(quality_checker, chunk, images)):
                reading.quality = report
    _run_checks(good, ood_check, scope_check)
    _judge_turned_films_by_their_corrected_copy(good, explainer, ood_check, segmenter, scope_check,
                                                batch_size)
    if progress:
        progress(1.0, f"Read {len(good)} of {len(readings)} files")


def _judge_turned_films_by_their_corrected_copy(readings: list[Reading], explainer, ood_check,
                                                segmenter, scope_check, batch_size: int) -> None:
    """A film the quality check found turned, flipped or inverted is a chest X-ray of the
    population or not whatever way up it was uploaded: its "not a chest X-ray", lung-field and
    scope checks are those of the corrected copy (one more batched pass, for those films only).
    So a turned child's film stays *doubtful* (its corrected reading offered) and is not called
    "older" or "not a chest X-ray" for being upside down; a blank image or a half film whose
    "inverted" copy is no chest X-ray either stays out of scope."""
    turned = [r for r in readings
              if r.quality is not None and r.quality.corrected is not None and r.ok]
    for start in range(0, len(turned), batch_size):
        chunk = turned[start:start + batch_size]
        shadows = [Reading(name=r.name, digest=r.digest, header=r.header,
                           model_input=np.ascontiguousarray(r.quality.corrected),
                           quality=type(r.quality)(low_resolution=r.quality.low_resolution,
                                                   original_size=r.quality.original_size))
                   for r in chunk]
        _explain_chunk(shadows, explainer, segmenter)
        _run_checks(shadows, ood_check, scope_check)
        for reading, shadow in zip(chunk, shadows):
            reading.ood_warning, reading.scope = shadow.ood_warning, shadow.scope
            reading.older_score = shadow.older_score
            reading.judged_on_corrected = True
            reading.corrected_lung_warning = shadow.lung_warning if segmenter is not None else None


def _explain_chunk(chunk: list[Reading], explainer, segmenter=None) -> np.ndarray:
    """Probability, CAMs and pooled features (and lung fields) for a chunk of decoded readings,
    in one batched pass each; returns the stacked model inputs."""
    images = np.stack([r.model_input for r in chunk])
    for reading, explanation in zip(chunk, explainer.explain(images)):
        reading.probability = explanation.probability
        reading.cams = explanation.cams
        reading.features = explanation.features
        reading.member_probabilities = explanation.member_probabilities
    if segmenter is not None:
        for reading, fields in zip(chunk, _lung_fields(segmenter, images)):
            add_lung_fields(reading, fields)
    return images


def corrected_display(display: np.ndarray, codes: Iterable[str]) -> np.ndarray:
    """The display copy with each correctable finding undone, in the order found."""
    from pneumo.models.quality import CORRECTABLE, correct

    for code in codes:
        if code in CORRECTABLE:
            display = correct(display, code)
    return display


def read_corrected(
    readings: Iterable[Reading],
    explainer,
    ood_check: Callable[[Reading], str | None] | None = None,
    segmenter=None,
    batch_size: int = 16,
    scope_check: Callable[[Reading], Verdict | None] | None = None,
) -> list[Reading]:
    """Read the corrected copy of each reading whose quality report offers one (in one batched
    pass); readings without one are left out. Each result is a new Reading of the same file
    with ``corrected_from`` naming what pneumo undid, a note saying so, and a quality report
    that keeps only what correcting cannot fix (low resolution)."""
    from pneumo.models.quality import CORRECTABLE, QualityReport, correction_note

    todo = [r for r in readings if r.quality is not None and r.quality.corrected is not None]
    out: list[Reading] = []
    for r in todo:
        codes = tuple(c for c in r.quality.codes if c in CORRECTABLE)
        kept = [(c, m) for c, m in r.quality.findings if c not in CORRECTABLE]
        out.append(Reading(
            name=r.name, digest=r.digest,
            display=corrected_display(r.display, codes),
            model_input=np.ascontiguousarray(r.quality.corrected),
            notes=[correction_note(codes)] + list(r.notes),
            original_size=r.original_size,
            quality=QualityReport(findings=kept, low_resolution=r.quality.low_resolution,
                                  original_size=r.quality.original_size),
            corrected_from=codes,
            header=r.header,
        ))
    for start in range(0, len(out), batch_size):
        _explain_chunk(out[start:start + batch_size], explainer, segmenter)
    _run_checks(out, ood_check, scope_check)
    return out


def _run_checks(readings: list[Reading], ood_check=None, scope_check=None) -> None:
    """The "not a chest X-ray" check, then the scope check, on each read image."""
    for reading in readings:
        if ood_check is not None:
            reading.ood_warning = ood_check(reading)
        if scope_check is not None:
            reading.scope = scope_check(reading)


NOT_READ = "NOT READ"
# The decision column (the CLI's CSV, the app's worklist): a class name only for a trusted reading.
DECISION_WORDS = {trust_states.DOUBTFUL: "DOUBTFUL", trust_states.OUT_OF_SCOPE: "OUT OF SCOPE",
                  trust_states.NOT_READ: NOT_READ}
RESULT_COLUMNS = ("file", "probability_pneumonia", "decision", "trust", "reason", "reason_code",
                  "threshold", "gradcam_in_lungs", "ood_warning", "lung_warning", "error", "notes",
                  "quality", "corrected", "calibration", "bundled_probability", "older_score",
                  "members_pneumonia", "members_disagree")


def decision_of(reading: Reading, threshold: float) -> str:
    """PNEUMONIA or NORMAL for a trusted reading; DOUBTFUL, OUT OF SCOPE or NOT READ otherwise
    (:data:`DECISION_WORDS`). The one rule for what a decision column says."""
    state = reading.trust.state
    if state == trust_states.TRUSTED:
        return decide(reading.probability, threshold)
    return DECISION_WORDS[state]


def quality_codes(reading: Reading) -> list[str]:
    """The quality check's finding codes for the file as found (for a corrected reading: what
    was undone, then what remains, such as low resolution)."""
    remaining = reading.quality.codes if reading.quality is not None else []
    return list(reading.corrected_from) + [c for c in remaining if c not in reading.corrected_from]


def result_row(reading: Reading, threshold: float, calibration: str = "") -> dict:
    """The one row format of a result (:data:`RESULT_COLUMNS`), for the CLI's CSV and the
    app's worklist alike: numbers stay numbers (None where they don't apply), text is text.

    ``calibration`` names the site calibration the probability went through ("": bundled).
    ``members_pneumonia`` is an ensemble's vote at ``threshold`` ("2 of 5"; "" for one model),
    ``members_disagree`` whether the members disagree (:mod:`pneumo.reading.vote`).
    """
    from pneumo.models.explain import METHODS

    verdict = reading.trust
    members = reading.vote(threshold)
    return {
        "file": reading.name,
        "probability_pneumonia": reading.probability,
        "decision": decision_of(reading, threshold),
        "trust": verdict.state,
        "reason": verdict.reason,
        "reason_code": verdict.code,
        "threshold": threshold,
        "gradcam_in_lungs": reading.lung_share.get(METHODS[0]),
        "ood_warning": reading.ood_warning or "",
        "lung_warning": reading.lung_warning or "",
        "error": reading.error or "",
        "notes": "; ".join(reading.notes),
        "quality": "; ".join(quality_codes(reading)),
        "corrected": "; ".join(reading.corrected_from),
        "calibration": calibration if reading.bundled_probability is not None else "",
        "bundled_probability": reading.bundled_probability,
        "older_score": reading.older_score,
        "members_pneumonia": members.count if members is not None else "",
        "members_disagree": members is not None and members.disagree,
    }


def worklist_rows(readings: list[Reading], threshold: float, calibration: str = "") -> list[dict]:
    """:func:`result_row` per reading for the app's table, flagged readings first (any state but
    trusted: doubtful, then out of scope, then not read), each group highest probability first.

    Each row also has ``probability`` (the text a person reads,
    :func:`pneumo.reading.wording.probability_text`), ``trust_label`` ("Doubtful"...),
    ``flagged`` (not trusted, or a trusted reading whose ensemble members disagree: a 3-2 vote,
    right about half the time on validation and test), ``why_flagged`` (the trust state's reason,
    else the disagreement; "" when not flagged), ``warning`` (every warning and, when an
    ensemble's members disagree, :func:`pneumo.reading.wording.disagreement_text`, joined) and
    ``index`` (the reading's position in ``readings``, so a screen can take its cards in the
    table's order and link a row to its card). A split vote does not change the trust state or
    the CSV's ``reason``. Numbers are rounded for the table (probabilities 4 decimals, the
    threshold 3).
    """
    from pneumo.reading.wording import disagreement_text, probability_text

    first = {trust_states.DOUBTFUL: 0, trust_states.OUT_OF_SCOPE: 2, trust_states.NOT_READ: 3,
             trust_states.TRUSTED: 4}
    split_vote = 1  # trusted, members disagree: after the doubtful films, before out of scope
    rows, ranks = [], []
    for index, r in enumerate(readings):
        row = result_row(r, threshold, calibration)
        for key in ("probability_pneumonia", "gradcam_in_lungs", "bundled_probability"):
            row[key] = None if row[key] is None else round(row[key], 4)
        row["threshold"] = round(threshold, 3)
        disagreement = disagreement_text(r.vote(threshold))
        trusted = row["trust"] == trust_states.TRUSTED
        rows.append({"file": row.pop("file"), "probability": probability_text(r.probability),
                     **row, "trust_label": trust_states.LABELS[row["trust"]],
                     "flagged": not trusted or bool(disagreement),
                     "why_flagged": disagreement if trusted else row["reason"],
                     "warning": "; ".join(r.warnings + ([disagreement] if disagreement else [])),
                     "index": index})
        ranks.append(split_vote if trusted and disagreement else first[row["trust"]])
    return sorted(rows, key=lambda row: (ranks[row["index"]], -1 if row["probability_pneumonia"]
                                         is None else -row["probability_pneumonia"]))
