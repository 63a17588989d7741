"""Site calibration: a department refits pneumo's probability on its own labelled sample.

The bundled model's probability was calibrated on validation images from the training centre.
A department's scanners, population and prevalence move it. Here a labelled local sample
(``NORMAL/`` and ``PNEUMONIA/``) is scored with the bundled model and a Platt calibration is fitted
on top of the bundled one::

    z = log(p / (1 - p))          # the bundled calibrated logit, from the model's probability
    p_site = sigmoid(a * z + b)

with a Gaussian prior on (a, b) around the bundled identity (1, 0) (``config.SITE_PRIOR_SD``,
``config.SITE_PRIOR_STRENGTH``), so a small sample moves the calibration only as far as it can
support. Operating points are chosen on the site sample's calibrated probabilities by the bundled
model's rules (highest threshold with sample sensitivity >= ``RECOMMENDED_SENSITIVITY_TARGET`` and
>= ``HIGH_SENSITIVITY_TARGET``).

The result is one small ``site.json`` in the site folder (``$PNEUMO_SITE_DIR``, else
``config.SITE_DIR_DEFAULT``): the site's name, the calibration, the thresholds, counts per class,
the date, the sha256 of the model file it was made for, and the sample's (label, probability)
numbers for the app's charts. Never an image, never a file name; the sample is stored sorted, so
not even the order of the files survives. A site file made for another model is ignored.

This module is the one owner of that file: the CLI (:mod:`pneumo.cli.calibrate`), the app
(:mod:`pneumo.app.ui`) and the benchmark use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np

from pneumo import config
from pneumo.evaluation import metrics as m
from pneumo.evaluation.artifacts import round_threshold
from pneumo.io.base import too_big_to_read

# One file of the local sample: (label 0/1, name to report, a loader giving its bytes).
Item = tuple[int, str, Callable[[], bytes]]
Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 224, 224, 3) model inputs -> (N,) probabilities
ProgressCallback = Callable[[float, str], None]
Screen = Callable[[list], list]  # decoded readings -> for each, why to leave it out of the fit, or None

PROBABILITY_DECIMALS = 6  # the sample's probabilities as stored
CALIBRATE_COMMAND = 'python -m pneumo.calibrate --data FOLDER --site "Name"'


class SiteFileError(ValueError):
    """A site file that cannot be used; ``str(err)`` says why."""


class SiteSampleError(ValueError):
    """A local sample that cannot give a site calibration; ``str(err)`` says why and what to do.
    Raised by :func:`calibrate` after reading, ``report`` holds what was read and skipped."""

    report: SampleReport | None = None


# --- the calibration math -------------------------------------------------------------------

def logit(probabilities) -> np.ndarray:
    """log(p / (1 - p)), probabilities clipped to [eps, 1 - eps] (``config.SITE_LOGIT_EPS``)."""
    eps = config.SITE_LOGIT_EPS
    p = np.clip(np.asarray(probabilities, dtype="float64"), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(x) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype="float64")))


def prior_precision(strength: float = config.SITE_PRIOR_STRENGTH,
                    sd: tuple[float, float] = config.SITE_PRIOR_SD) -> tuple[float, float]:
    """The prior's precision on (a, b): strength / sd**2 each."""
    if strength < 0 or not all(s > 0 for s in sd):
        raise ValueError("prior strength must be >= 0 and standard deviations > 0")
    return strength / sd[0] ** 2, strength / sd[1] ** 2


def fit_platt_prior(logits, labels, precision: tuple[float, float] = (0.0, 0.0),
                    mean: tuple[float, float] = (1.0, 0.0),
                    iterations: int = 100) -> tuple[float, float]:
    """Platt fit of ``p = sigmoid(a * z + b)`` with a Gaussian prior on (a, b) around ``mean``
    (a MAP estimate): :func:`pneumo.evaluation.metrics.fit_platt`, which this equals at precision 0."""
    y = np.asarray(labels, dtype="int64").ravel()
    z = np.asarray(logits, dtype="float64").ravel()
    if y.shape != z.shape:
        raise ValueError("labels and logits differ in length")
    return m.fit_platt(z, y, iterations, precision=precision, mean=mean)


def fit_site(labels, bundled_probabilities, strength: float = config.SITE_PRIOR_STRENGTH,
             sd: tuple[float, float] = config.SITE_PRIOR_SD) -> tuple[float, float]:
    """(a, b) of the site calibration on top of the bundled one, prior towards (1, 0)."""
    return fit_platt_prior(logit(bundled_probabilities), labels, prior_precision(strength, sd))


def apply_calibration(bundled_probabilities, scale: float, bias: float) -> np.ndarray:
    """Site probabilities sigmoid(a * logit(p) + b) from bundled ones (any shape)."""
    return sigmoid(scale * logit(bundled_probabilities) + bias)


def operating_points(labels, probabilities) -> dict[str, float]:
    """The bundled model's threshold rules on these labels and probabilities."""
    return {
        "recommended": m.sensitivity_threshold(labels, probabilities,
                                               config.RECOMMENDED_SENSITIVITY_TARGET),
        "high_sensitivity": m.sensitivity_threshold(labels, probabilities,
                                                    config.HIGH_SENSITIVITY_TARGET),
    }


# --- the site file --------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteCalibration:
    """The content of ``site.json``."""

    site: str
    scale: float  # a
    bias: float  # b
    thresholds: dict[str, float]  # recommended, high_sensitivity (site-calibrated scale)
    counts: dict[str, int]  # NORMAL, PNEUMONIA (images used), unreadable (skipped)
    created: str  # ISO date
    model_fingerprint: str  # sha256 of the model file
    labels: tuple[int, ...]  # the sample, sorted by (label, probability)
    probabilities: tuple[float, ...]  # site-calibrated
    bundled_probabilities: tuple[float, ...]  # the bundled model's, same order
    prior: dict = field(default_factory=dict)
    sample_metrics: dict = field(default_factory=dict)
    set_by: str = ""  # who wrote it: the signed-in user, "this server" (app without sign-in), "command line"

    @property
    def n_images(self) -> int:
        return len(self.labels)

    @property
    def recommended(self) -> float:
        """The site's recommended threshold as the app uses it (3 decimals)."""
        return round_threshold(self.thresholds["recommended"])

    @property
    def high_sensitivity(self) -> float:
        return round_threshold(self.thresholds["high_sensitivity"])

    @property
    def label(self) -> str:
        """"Name (DATE)": the calibration column of the CLI's CSV and the app's worklist."""
        return f"{self.site} ({self.created})"

    @property
    def banner(self) -> str:
        return f"Calibrated for {self.site} on {self.n_images:,} images, {self.created}"

    def apply(self, bundled_probabilities):
        """Site probability of bundled ones: a float for a float, an array for an array."""
        out = apply_calibration(bundled_probabilities, self.scale, self.bias)
        return float(out) if np.ndim(out) == 0 else out

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, site probabilities) of the sample, as arrays."""
        return (np.asarray(self.labels, dtype="int64"),
                np.asarray(self.probabilities, dtype="float64"))

    def to_json(self) -> dict:
        return {
            "format": config.SITE_FORMAT,
            "site": self.site,
            "created": self.created,
            "model_fingerprint": self.model_fingerprint,
            "calibration": {
                "scale": self.scale, "bias": self.bias,
                "formula": "p_site = sigmoid(scale * log(p / (1 - p)) + bias), p the bundled "
                           "model's calibrated probability",
                "prior": self.prior,
            },
            "thresholds": {
                **self.thresholds,
                "recommended_rule": f"highest threshold with sample sensitivity >= "
                                    f"{config.RECOMMENDED_SENSITIVITY_TARGET}",
                "high_sensitivity_rule": f"highest threshold with sample sensitivity >= "
                                         f"{config.HIGH_SENSITIVITY_TARGET}",
            },
            "counts": self.counts,
            "set_by": self.set_by,
            "sample_metrics": self.sample_metrics,
            "sample": {
                "note": "one entry per image, sorted by label then probability; no names",
                "label": list(self.labels),
                "probability": list(self.probabilities),
                "bundled_probability": list(self.bundled_probabilities),
            },
        }


def _number(value, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SiteFileError(f"{what} is not a number")
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise SiteFileError(f"{what} is {value}, outside {low}..{high}")
    return value


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SiteFileError(f"{what} is not a count")
    return value


def validate(data) -> SiteCalibration:
    """A parsed ``site.json`` as a :class:`SiteCalibration`, or :class:`SiteFileError`."""
    try:
        if not isinstance(data, dict):
            raise SiteFileError("it is not a JSON object")
        if data.get("format") != config.SITE_FORMAT:
            raise SiteFileError(f"format {data.get('format')!r}, expected {config.SITE_FORMAT}")
        site = data["site"]
        if not isinstance(site, str) or not site.strip() or len(site) > 100:
            raise SiteFileError("the site name is missing or longer than 100 characters")
        fingerprint = data["model_fingerprint"]
        if not (isinstance(fingerprint, str) and len(fingerprint) == 64
                and all(c in "0123456789abcdef" for c in fingerprint)):
            raise SiteFileError("the model fingerprint is not a sha256")
        created = data["created"]
        dt.date.fromisoformat(created)
        cal = data["calibration"]
        scale = _number(cal["scale"], "the calibration scale", 1e-6)
        bias = _number(cal["bias"], "the calibration bias")
        th = data["thresholds"]
        thresholds = {k: _number(th[k], f"the {k} threshold", 0.0, 1.0)
                      for k in ("recommended", "high_sensitivity")}
        sample = data["sample"]
        labels = [int(_number(v, "a sample label", 0, 1)) for v in sample["label"]]
        if any(v not in (0, 1) for v in sample["label"]):
            raise SiteFileError("a sample label is not 0 or 1")
        probs = [_number(v, "a sample probability", 0.0, 1.0) for v in sample["probability"]]
        bundled = [_number(v, "a sample probability", 0.0, 1.0)
                   for v in sample["bundled_probability"]]
        if not (len(labels) == len(probs) == len(bundled)):
            raise SiteFileError("the sample's columns differ in length")
        counts = {k: _count(v, f"the count {k!r}") for k, v in data["counts"].items()}
        if (counts.get("NORMAL"), counts.get("PNEUMONIA")) != (labels.count(0), labels.count(1)):
            raise SiteFileError("the counts per class do not match the sample")
        if min(counts["NORMAL"], counts["PNEUMONIA"]) < 1:
            raise SiteFileError("the sample lacks a class")
    except SiteFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SiteFileError(f"it is incomplete or malformed ({type(err).__name__}: {err})") from None
    return SiteCalibration(
        site=site.strip(), scale=scale, bias=bias, thresholds=thresholds, counts=counts,
        created=created, model_fingerprint=fingerprint, labels=tuple(labels),
        probabilities=tuple(probs), bundled_probabilities=tuple(bundled),
        prior=dict(cal.get("prior") or {}), sample_metrics=dict(data.get("sample_metrics") or {}),
        set_by=str(data.get("set_by") or "")[:200])


def site_dir() -> Path:
    """The site folder: ``$PNEUMO_SITE_DIR``, else ``config.SITE_DIR_DEFAULT`` (read at each call)."""
    value = os.environ.get(config.SITE_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else Path(config.SITE_DIR_DEFAULT)


def site_file(folder: Path | None = None) -> Path:
    return Path(folder if folder is not None else site_dir()) / config.SITE_FILE


def save(calibration: SiteCalibration, folder: Path | None = None) -> Path:
    """Write ``site.json`` into the site folder (made if needed), atomically; returns its path."""
    path = site_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def read(path: Path) -> SiteCalibration:
    """Parse and validate a site file (no fingerprint check); :class:`SiteFileError` if unusable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SiteFileError(f"it cannot be read as JSON ({err})") from None
    return validate(data)


@lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model_path: Path | None = None) -> str:
    """sha256 of the model file (cached per file version)."""
    path = Path(model_path) if model_path is not None else config.weights_path(config.MODEL_FILE)
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class SiteStatus:
    """What the app and the CLIs use: the active calibration (None: the bundled one) and, when a
    site file exists but is not used, the message saying why."""

    calibration: SiteCalibration | None
    message: str | None
    path: Path


def load(folder: Path | None = None, model_path: Path | None = None) -> SiteStatus:
    """The site calibration to use, if any. Never raises: an unusable or foreign file is ignored
    with a message; no file means the bundled calibration, silently."""
    path = site_file(folder)
    if not path.exists():
        return SiteStatus(None, None, path)
    ignored = "pneumo ignores it and uses the bundled calibration"
    try:
        calibration = read(path)
    except SiteFileError as err:
        return SiteStatus(None, f"The site calibration file {path} cannot be used: {err}. "
                                f"{ignored.capitalize()}; make a new one with "
                                f"`{CALIBRATE_COMMAND}`.", path)
    try:
        current = model_fingerprint(model_path)
    except OSError:
        return SiteStatus(None, f"The site calibration for {calibration.site} cannot be checked "
                                f"against the model (no model file); {ignored}.", path)
    if current != calibration.model_fingerprint:
        return SiteStatus(None, f"The site calibration for {calibration.site} "
                                f"({calibration.created}) was made for another model (fingerprint "
                                f"{calibration.model_fingerprint[:12]}..., this model "
                                f"{current[:12]}...): {ignored}. Calibrate again for this model "
                                f"with `{CALIBRATE_COMMAND}`.", path)
    return SiteStatus(calibration, None, path)


def build(site: str, labels, bundled_probabilities, fingerprint: str, unreadable: int = 0,
          created: str | None = None, left_out: int = 0, strength: float = config.SITE_PRIOR_STRENGTH,
          sd: tuple[float, float] = config.SITE_PRIOR_SD) -> SiteCalibration:
    """Fit the site calibration and its operating points on a scored, labelled sample.

    :class:`SiteSampleError` when the sample cannot support one (too few images of a class, or a
    model that ranks this site's classes backwards).
    """
    site = (site or "").strip()
    if not site or len(site) > 100:
        raise SiteSampleError("Give the site a name (at most 100 characters).")
    y = np.asarray(labels, dtype="int64").ravel()
    p = np.round(np.asarray(bundled_probabilities, dtype="float64").ravel(), PROBABILITY_DECIMALS)
    n = {name: int(np.sum(y == label)) for label, name in enumerate(config.CLASS_NAMES)}
    short = [name for name, k in n.items() if k < config.SITE_MIN_PER_CLASS]
    if short:
        raise SiteSampleError(
            "The sample has " + " and ".join(f"{n[c]} readable {c} image(s)" for c in short)
            + f"; a site calibration needs at least {config.SITE_MIN_PER_CLASS} of each class "
              "(a hundred or more is better).")
    scale, bias = fit_site(y, p, strength, sd)
    if not scale > 0:
        raise SiteSampleError(
            "On this sample the model ranks NORMAL images above PNEUMONIA ones (fitted scale "
            f"{scale:.3f}): it does not work at this site, and no site calibration is made.")
    site_p = np.round(apply_calibration(p, scale, bias), PROBABILITY_DECIMALS)
    order = np.lexsort((site_p, p, y))
    y, p, site_p = y[order], p[order], site_p[order]
    thresholds = operating_points(y, site_p)
    at = m.metrics_at(y, site_p, round_threshold(thresholds["recommended"]))
    return SiteCalibration(
        site=site, scale=scale, bias=bias, thresholds=thresholds,
        counts={**n, "unreadable": int(unreadable), "left_out": int(left_out)},
        created=created or dt.date.today().isoformat(), model_fingerprint=fingerprint,
        labels=tuple(int(v) for v in y), probabilities=tuple(float(v) for v in site_p),
        bundled_probabilities=tuple(float(v) for v in p),
        prior={"kind": "Gaussian on (scale, bias) around (1, 0)", "strength": strength,
               "sd_scale": sd[0], "sd_bias": sd[1]},
        sample_metrics={
            "auc": m.roc_auc(y, site_p),
            "ece_bundled": m.expected_calibration_error(y, p, config.CALIBRATION_BINS),
            "ece_site_in_sample": m.expected_calibration_error(y, site_p, config.CALIBRATION_BINS),
            "at_recommended_in_sample": at,
        })


# --- reading the local sample -----------------------------------------------------------------

@dataclass
class SampleReport:
    """What was read: labels and bundled probabilities of the readable images, and the files
    skipped with the reason (names are for the person running it; never written to the site
    file)."""

    labels: np.ndarray
    probabilities: np.ndarray
    skipped: list[tuple[str, str]]
    left_out: list[tuple[str, str]] = field(default_factory=list)  # read, but not trusted: why


def class_of(parts: Sequence[str]) -> int | None:
    """Label from a path's folders: the last one named NORMAL or PNEUMONIA (any case)."""
    names = [c.upper() for c in config.CLASS_NAMES]
    for part in reversed(parts):
        if part.upper() in names:
            return names.index(part.upper())
    return None


def folder_items(folder: Path) -> list[Item]:
    """The images under ``folder/NORMAL`` and ``folder/PNEUMONIA`` (any case; searched
    recursively), labelled by their folder. :class:`SiteSampleError` without those folders."""
    from pneumo.io.files import find_images, read_file

    folder = Path(folder)
    if not folder.is_dir():
        raise SiteSampleError(f"{folder} is not a folder.")
    classes: dict[int, Path] = {}
    for child in sorted(folder.iterdir()):
        label = class_of([child.name]) if child.is_dir() else None
        if label is not None:
            classes.setdefault(label, child)
    missing = [c for i, c in enumerate(config.CLASS_NAMES) if i not in classes]
    if missing:
        raise SiteSampleError(f"{folder} has no {' or '.join(f'{c}/' for c in missing)} folder: "
                              "put the sample's images in NORMAL/ and PNEUMONIA/ directly under it.")
    items: list[Item] = []
    for label, sub in sorted(classes.items()):
        for path in find_images(sub):
            items.append((label, path.relative_to(folder).as_posix(),
                          lambda path=path: read_file(path)))
    return items


def zip_items(data: bytes) -> list[Item]:
    """The images of an uploaded zip of ``NORMAL/`` and ``PNEUMONIA/`` folders (at any depth),
    read in memory, never extracted. Entries above the upload limit are reported, not read.
    :class:`SiteSampleError` for a file that is not a zip, or one too large to take."""
    from pneumo.io.images import SUPPORTED_EXTENSIONS

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise SiteSampleError(f"The upload is not a readable zip file ({err}).") from None
    items: list[Item] = []
    total = 0
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if info.is_dir() or path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            continue
        if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
            continue
        label = class_of(path.parts[:-1])
        if label is None:
            continue
        if len(items) >= config.SITE_ZIP_MAX_FILES:
            raise SiteSampleError(f"The zip holds more than {config.SITE_ZIP_MAX_FILES:,} images; "
                                  "calibrate on a smaller sample, or use the command line.")
        total += info.file_size
        if total > config.SITE_ZIP_MAX_MB * 2**20:
            raise SiteSampleError(f"The zip's images add up to more than {config.SITE_ZIP_MAX_MB:,}"
                                  " MB uncompressed; use the command line for a sample this large.")
        items.append((label, path.as_posix(), lambda info=info: _zip_entry(archive, info)))
    return items


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    refusal = too_big_to_read(info.file_size)
    if refusal:
        raise OSError(refusal)
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, ValueError, EOFError) as err:
        raise OSError(f"It could not be taken out of the zip ({err}).") from None


def score_items(items: Iterable[Item], score: Scorer, batch_size: int = 16,
                progress: ProgressCallback | None = None, screen: Screen | None = None
                ) -> SampleReport:
    """Decode each file through the app's path (:func:`pneumo.reading.reader.decode_file`) and score the
    readable ones in batches; a file that cannot be read is reported and skipped. ``screen``
    (decoded readings -> for each, why to leave it out or None; :func:`trust_screen`) leaves
    out of the fit what pneumo would not answer about (out of scope or doubtful), reported in
    ``left_out``: a new site's children called "older" show up there first."""
    from pneumo.reading.reader import decode_file

    items = list(items)
    labels: list[int] = []
    probs: list[float] = []
    skipped: list[tuple[str, str]] = []
    left_out: list[tuple[str, str]] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if progress:
            progress(start / max(len(items), 1),
                     f"Reading images {start + 1}-{start + len(chunk)} of {len(items)}")
        inputs, chunk_labels, decoded = [], [], []
        for label, name, loader in chunk:
            try:
                data = loader()
            except OSError as err:
                skipped.append((name, str(err) if not getattr(err, "strerror", None)
                                else f"The file could not be opened ({err.strerror})."))
                continue
            reading = decode_file(name, data)
            del data
            if reading.error:
                skipped.append((name, reading.error))
                continue
            decoded.append((label, reading))
        reasons = screen([r for _, r in decoded]) if screen and decoded else [None] * len(decoded)
        for (label, reading), reason in zip(decoded, reasons):
            if reason:
                left_out.append((reading.name, reason))
                continue
            inputs.append(reading.model_input)
            chunk_labels.append(label)
        if inputs:
            out = np.asarray(score(np.stack(inputs)), dtype="float64").ravel()
            probs.extend(out.tolist())
            labels.extend(chunk_labels)
    if progress:
        progress(1.0, f"Read {len(labels)} of {len(items)} images")
    return SampleReport(np.asarray(labels, dtype="int64"), np.asarray(probs, dtype="float64"),
                        skipped, left_out)



def trust_screen(explainer, ood_check=None, segmenter=None, quality_checker=None,
                 scope_check=None) -> Screen:
    """A ``screen`` for :func:`score_items`: runs the app's checks on decoded readings and gives
    the trust reason of each that is not trusted (out of scope or doubtful), else None."""
    from pneumo.reading.reader import check_decoded

    def screen(readings: list) -> list:
        check_decoded(readings, explainer, ood_check, segmenter=segmenter,
                      quality_checker=quality_checker, scope_check=scope_check)
        return [None if r.trust.trusted else f"{r.trust.label}: {r.trust.reason}" for r in readings]

    return screen


def calibrate(items: Iterable[Item], site: str, score: Scorer, fingerprint: str,
              folder: Path | None = None, batch_size: int = 16,
              progress: ProgressCallback | None = None, screen: Screen | None = None,
              write: bool = True, set_by: str = "") -> tuple[SiteCalibration, SampleReport, Path]:
    """The whole flow, shared by the CLI and the app: read and score the sample, fit, write
    ``site.json`` (unless ``write=False``: the app checks :func:`acceptance_problem` and asks
    before replacing one; then :func:`save`). :class:`SiteSampleError` when no calibration can
    be made (nothing written). Returns the calibration, the report and the file's path."""
    items = list(items)
    if not items:
        raise SiteSampleError("No images found in NORMAL/ and PNEUMONIA/.")
    report = score_items(items, score, batch_size, progress, screen)
    try:
        calibration = build(site, report.labels, report.probabilities, fingerprint,
                            unreadable=len(report.skipped), left_out=len(report.left_out))
    except SiteSampleError as err:
        err.report = report  # what was skipped, for the message
        raise
    calibration = replace(calibration, set_by=set_by)
    return calibration, report, save(calibration, folder) if write else site_file(folder)


def remove(folder: Path | None = None) -> bool:
    """Delete ``site.json`` (the bundled calibration is used again); False when there was none."""
    path = site_file(folder)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def cross_fitted_ece(labels, bundled_probabilities, seed: int = config.SEED) -> dict[str, float]:
    """Reliability of a site calibration on images it was not fitted to, as
    ``benchmarks/site_calibration.py`` measures it: the sample split into two class-stratified
    halves, calibrated on one and applied to the other, both ways; the pooled ECE of those
    site probabilities against the bundled ECE on the same images."""
    y = np.asarray(labels, dtype="int64").ravel()
    p = np.asarray(bundled_probabilities, dtype="float64").ravel()
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), dtype=int)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        half[idx[len(idx) // 2:]] = 1
    site_p = np.empty_like(p)
    for k in (0, 1):
        on, off = half == k, half != k
        scale, bias = fit_site(y[on], p[on])
        site_p[off] = apply_calibration(p[off], scale, bias)
    return {"site": m.expected_calibration_error(y, site_p, config.CALIBRATION_BINS),
            "bundled": m.expected_calibration_error(y, p, config.CALIBRATION_BINS)}


def acceptance_problem(calibration: SiteCalibration) -> str | None:
    """Why the app refuses this calibration, or None: fewer than ``config.SITE_SMALL_PER_CLASS``
    images of a class, or a cross-fitted reliability (:func:`cross_fitted_ece`) worse than the
    bundled calibration's on the same sample. One plain sentence each."""
    c = calibration.counts
    if min(c["NORMAL"], c["PNEUMONIA"]) < config.SITE_SMALL_PER_CLASS:
        return (f"The sample has {c['NORMAL']} NORMAL and {c['PNEUMONIA']} PNEUMONIA images that "
                f"pneumo could read and answer about; a site calibration needs at least "
                f"{config.SITE_SMALL_PER_CLASS} of each. Nothing was changed.")
    ece = cross_fitted_ece(calibration.labels, calibration.bundled_probabilities)
    if ece["site"] > ece["bundled"]:
        return (f"On this sample a site calibration would make the probabilities less reliable "
                f"(calibration error {ece['bundled']:.3f} with the bundled calibration, "
                f"{ece['site']:.3f} with the site's, each measured on images it was not fitted "
                "to). Nothing was changed.")
    return None


def summary_lines(calibration: SiteCalibration, report: SampleReport | None = None) -> list[str]:
    """What a person is told after calibrating (no file names: those are in ``report.skipped``)."""
    c, s = calibration.counts, calibration.sample_metrics
    lines = [
        f"{calibration.banner}: {c['NORMAL']} NORMAL, {c['PNEUMONIA']} PNEUMONIA"
        + (f"; {c.get('unreadable', 0)} file(s) skipped as unreadable" if c.get("unreadable") else "")
        + (f"; {c.get('left_out', 0)} image(s) left out of the fit as out of scope or doubtful "
           "(listed above)" if c.get("left_out") else ""),
        f"Site calibration: p_site = sigmoid({calibration.scale:.3f} * logit(p) "
        f"{'+' if calibration.bias >= 0 else '-'} {abs(calibration.bias):.3f}).",
        f"Recommended threshold {calibration.recommended:.3f} (sample sensitivity >= "
        f"{config.RECOMMENDED_SENSITIVITY_TARGET}); high sensitivity "
        f"{calibration.high_sensitivity:.3f} (>= {config.HIGH_SENSITIVITY_TARGET}).",
    ]
    if s:
        lines.append(f"On the sample: AUC {s['auc']:.3f}; calibration error (ECE) "
                     f"{s['ece_bundled']:.3f} with the bundled calibration, "
                     f"{s['ece_site_in_sample']:.3f} after (measured on the images it was fitted to).")
    if min(c["NORMAL"], c["PNEUMONIA"]) < config.SITE_SMALL_PER_CLASS:
        lines.append(f"The sample is small (under {config.SITE_SMALL_PER_CLASS} images of a class): "
                     "the prior keeps the calibration near the bundled one, and the thresholds "
                     "rest on few images. A few hundred images give firmer figures.")
    return lines


def model_card_note(calibration: SiteCalibration) -> str:
    """The model card's words under the site's reliability diagram."""
    c, s = calibration, calibration.sample_metrics
    ece = (f" Calibration error (ECE) on the sample: {s['ece_bundled']:.3f} with the bundled "
           f"calibration, {s['ece_site_in_sample']:.3f} after; the diagram is in-sample (the "
           "calibration was fitted to these images), so new images will sit a little further "
           "from the diagonal." if s else "")
    return (f"{c.banner} ({c.counts['NORMAL']:,} NORMAL, {c.counts['PNEUMONIA']:,} PNEUMONIA): "
            f"p_site = sigmoid({c.scale:.3f} x logit(p) {'+' if c.bias >= 0 else '-'} "
            f"{abs(c.bias):.3f}), recommended threshold {c.recommended:.3f} and high-sensitivity "
            f"threshold {c.high_sensitivity:.3f}, chosen on the sample by the bundled model's "
            f"rules.{ece} The validation and test diagrams show the bundled calibration.")


# --- using it in a reading --------------------------------------------------------------------

def calibrate_reading(reading, calibration: SiteCalibration | None):
    """A copy of a :class:`pneumo.reading.reader.Reading` whose probability is site-calibrated (the
    bundled one kept in ``bundled_probability``); unchanged without a calibration or a
    probability."""
    if calibration is None or reading.probability is None or reading.bundled_probability is not None:
        return reading
    members = reading.member_probabilities  # an ensemble's: the same map, so they vote on one scale
    return replace(reading, probability=calibration.apply(reading.probability),
                   bundled_probability=reading.probability,
                   member_probabilities=None if members is None else calibration.apply(members))
