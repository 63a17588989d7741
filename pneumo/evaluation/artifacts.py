"""The records in ``weights/``: one typed reader and one writer per file, and the threshold rule.

Every module that reads or writes ``metrics.json``, ``training.json``, ``history.csv``, the
prediction CSVs or the OOD reference's path goes through here, so a renamed key fails where the
file is written (the writers read back what they wrote) instead of on a page at run time.
The model files (``*.keras``) are loaded by their own modules; their names are in
:mod:`pneumo.config`, like every other file name.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumo import config

PREDICTION_FIELDS = ("filename", "label", "class_name", "subtype", "patient", "probability")
HISTORY_FIELDS = ("phase", "epoch", "loss", "auc", "bce", "outside", "consistency", "val_loss",
                  "val_auc", "val_outside", "lr", "seconds")
THRESHOLD_DECIMALS = 3


def weights_file(name: str | Path, weights_dir: Path | None = None) -> Path:
    """``name`` inside ``weights_dir`` (default: the bundled ``weights/``)."""
    return Path(weights_dir) / name if weights_dir is not None else config.weights_path(name)


# --- thresholds -------------------------------------------------------------------------------

def round_threshold(value: float) -> float:
    """A threshold as the app, the CLIs and the benchmarks use it: 3 decimals."""
    return round(float(value), THRESHOLD_DECIMALS)


@dataclass(frozen=True)
class Thresholds:
    """The operating points chosen on validation, as stored (unrounded) in ``metrics.json``."""

    recommended: float
    high_sensitivity: float
    default: float = config.DEFAULT_THRESHOLD
    recommended_rule: str = ""
    high_sensitivity_rule: str = ""

    @property
    def recommended_shown(self) -> float:
        return round_threshold(self.recommended)

    @property
    def high_sensitivity_shown(self) -> float:
        return round_threshold(self.high_sensitivity)

    @classmethod
    def from_dict(cls, d: dict) -> Thresholds:
        return cls(recommended=float(d["recommended"]),
                   high_sensitivity=float(d.get("high_sensitivity", "nan")),
                   default=float(d.get("default", config.DEFAULT_THRESHOLD)),
                   recommended_rule=d.get("recommended_rule", ""),
                   high_sensitivity_rule=d.get("high_sensitivity_rule", ""))


# --- metrics.json -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A figure with its 95 % bootstrap interval."""

    value: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class Metrics:
    """``metrics.json``: thresholds, test figures at the recommended threshold, heat maps, OOD."""

    thresholds: Thresholds
    test_at_recommended: dict[str, Estimate]
    test_ece: float
    test_n: int
    heatmaps: dict = field(default_factory=dict)
    ood: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # the whole file, for the CLI's table

    @classmethod
    def from_dict(cls, d: dict) -> Metrics:
        test = d["test"]
        return cls(
            thresholds=Thresholds.from_dict(d["thresholds"]),
            test_at_recommended={k: Estimate(float(v["value"]), tuple(v["ci95"]))
                                 for k, v in test["at_recommended"].items()},
            test_ece=float(test["ece"]), test_n=int(test["n"]),
            heatmaps=d.get("heatmaps", {}), ood=d.get("ood", {}), raw=d)


def read_metrics(weights_dir: Path | None = None) -> Metrics | None:
    """``metrics.json``, or None when it is missing."""
    path = weights_file(config.METRICS_FILE, weights_dir)
    return Metrics.from_dict(json.loads(path.read_text())) if path.exists() else None


def write_metrics(metrics: dict, weights_dir: Path | None = None) -> Metrics:
    """Write ``metrics.json`` and read it back (a missing key fails here, not in the app)."""
    path = weights_file(config.METRICS_FILE, weights_dir)
    parsed = Metrics.from_dict(metrics)
    path.write_text(json.dumps(metrics, indent=2))
    return parsed


def read_ood_figures(weights_dir: Path | None = None) -> dict:
    """Only the ``ood`` section of ``metrics.json`` ({} when the file or the section is missing).

    ``evaluate --keep-ood`` carries it over; it must not depend on the rest of the file, which
    may come from an older version or a partial run.
    """
    section = _metrics_as_read(weights_dir).get("ood", {})
    return section if isinstance(section, dict) else {}


def _metrics_as_read(weights_dir: Path | None = None) -> dict:
    """``metrics.json`` as plain JSON, unchecked; {} when it is missing."""
    path = weights_file(config.METRICS_FILE, weights_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def update_metrics_section(name: str, section: dict, weights_dir: Path | None = None) -> None:
    """Replace one top-level section of ``metrics.json`` (e.g. ``ood`` after a refit)."""
    metrics = _metrics_as_read(weights_dir)
    metrics[name] = section
    weights_file(config.METRICS_FILE, weights_dir).write_text(json.dumps(metrics, indent=2))


def read_thresholds(weights_dir: Path | None = None) -> Thresholds | None:
    """Only the ``thresholds`` section of ``metrics.json``; None when the file is missing."""
    path = weights_file(config.METRICS_FILE, weights_dir)
    return Thresholds.from_dict(json.loads(path.read_text())["thresholds"]) if path.exists() else None


def recommended_threshold(weights_dir: Path | None = None) -> float:
    """The recommended threshold, rounded by :func:`round_threshold`; 0.5 without metrics."""
    thresholds = read_thresholds(weights_dir)
    return config.DEFAULT_THRESHOLD if thresholds is None else thresholds.recommended_shown


# --- training.json ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(scale * logit + bias)``, fitted on validation."""

    method: str
    scale: float
    bias: float
    fitted_on: str = "validation images"


@dataclass(frozen=True)
class TrainingRecord:
    """``training.json``: what was trained on what, how, and how it scored on validation."""

    model: str
    splits: dict[str, dict[str, int]]
    patients: dict[str, int]
    head_only_val_auc: float
    best_epoch: int | None
    best_val_loss: float | None
    best_val_auc: float | None
    kept: str
    augmentation: str
    lung_penalty: float
    calibration: Calibration
    duration_minutes: float
    versions: dict[str, str]
    data_fingerprint: str
    members: tuple[dict, ...] = ()  # an ensemble's members (seed, val_log_loss, ...); () for one model

    @classmethod
    def from_dict(cls, d: dict) -> TrainingRecord:
        cal = d["calibration"]
        return cls(
            model=d["model"], splits=d["splits"], patients=d["patients"],
            head_only_val_auc=float(d["head_only_val_auc"]), best_epoch=d.get("best_epoch"),
            best_val_loss=d.get("best_val_loss"), best_val_auc=d.get("best_val_auc"),
            kept=d.get("checkpoint", {}).get("chosen", "best_epoch").replace("_", " "),
            augmentation=d["config"].get("augmentation", "mild augmentation") + (
                f"; left-right mirror with probability {d['config']['hflip']:g}"
                if d["config"].get("hflip") else ""),
            lung_penalty=float(d["config"].get("lung_penalty", 0.0)),
            calibration=Calibration(cal["method"], float(cal["scale"]), float(cal["bias"]),
                                    cal.get("fitted_on", "validation images")),
            duration_minutes=float(d["duration_minutes"]), versions=d["versions"],
            data_fingerprint=d["data_fingerprint"], members=tuple(d.get("members", ())))


def read_training(weights_dir: Path | None = None) -> TrainingRecord | None:
    """``training.json``, or None when it is missing."""
    path = weights_file(config.TRAINING_FILE, weights_dir)
    return TrainingRecord.from_dict(json.loads(path.read_text())) if path.exists() else None


def read_training_dict(weights_dir: Path | None = None) -> dict:
    """``training.json`` as written ({} when missing), for a writer that updates one entry."""
    path = weights_file(config.TRAINING_FILE, weights_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def write_training(record: dict, weights_dir: Path | None = None) -> TrainingRecord:
    """Write ``training.json`` and read it back (a missing key fails here, not in the app)."""
    parsed = TrainingRecord.from_dict(record)
    weights_file(config.TRAINING_FILE, weights_dir).write_text(json.dumps(record, indent=2))
    return parsed


# --- prediction CSVs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Predictions:
    """One split's calibrated probabilities, one entry per image."""

    filename: np.ndarray
    label: np.ndarray
    class_name: np.ndarray
    subtype: np.ndarray
    patient: np.ndarray
    probability: np.ndarray


def predictions_file(split: str, weights_dir: Path | None = None) -> Path:
    """``test_predictions.csv`` or ``val_predictions.csv``."""
    name = {"test": config.TEST_PREDICTIONS_FILE, "val": config.VAL_PREDICTIONS_FILE}[split]
    return weights_file(name, weights_dir)


def read_predictions(split_or_path: str | Path, weights_dir: Path | None = None
                     ) -> Predictions | None:
    """A split's (``"test"``/``"val"``) or a file's predictions; None when the file is missing."""
    path = predictions_file(split_or_path, weights_dir) if split_or_path in ("test", "val") \
        else Path(split_or_path)
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return Predictions(
        filename=np.array([r["filename"] for r in rows]),
        label=np.array([int(r["label"]) for r in rows]),
        class_name=np.array([r["class_name"] for r in rows]),
        subtype=np.array([r["subtype"] for r in rows]),
        patient=np.array([r.get("patient", "") for r in rows]),
        probability=np.array([float(r["probability"]) for r in rows]))


def write_predictions(split: str, samples: list, probabilities: np.ndarray,
                      weights_dir: Path | None = None) -> Path:
    """Write a split's predictions (``samples``: :class:`pneumo.data.splits.Sample`)."""
    path = predictions_file(split, weights_dir)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PREDICTION_FIELDS)
        writer.writeheader()
        for s, p in zip(samples, probabilities):
            writer.writerow({"filename": s.filename, "label": s.label, "class_name": s.class_name,
                             "subtype": s.subtype, "patient": s.patient,
                             "probability": f"{float(p):.9g}"})
    return path


# --- history.csv ------------------------------------------------------------------------------

def history_file(weights_dir: Path | None = None) -> Path:
    return weights_file(config.HISTORY_FILE, weights_dir)


def append_history(row: dict, weights_dir: Path | None = None) -> None:
    """Add one epoch's row (keys: :data:`HISTORY_FIELDS`) to ``history.csv``."""
    path = history_file(weights_dir)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def read_history(weights_dir: Path | None = None) -> dict[str, list] | None:
    """``history.csv`` as columns (numbers as floats, ``phase`` as text); None when missing."""
    path = history_file(weights_dir)
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list] = {k: [] for k in rows[0]} if rows else {}
    for row in rows:
        for k, v in row.items():
            columns[k].append(v if k == "phase" else (float(v) if v not in ("", None) else None))
    return columns


# --- other records ----------------------------------------------------------------------------

def ood_file(weights_dir: Path | None = None) -> Path:
    """The out-of-distribution reference (its format is :class:`pneumo.models.ood.OodDetector`'s)."""
    return weights_file(config.OOD_FILE, weights_dir)


def read_record(name: str, weights_dir: Path | None = None) -> dict | None:
    """A model's JSON training record (``lungs.json``, ``quality.json``), or None."""
    path = weights_file(name, weights_dir)
    return json.loads(path.read_text()) if path.exists() else None


def write_record(name: str, record: dict, weights_dir: Path | None = None) -> Path:
    """Write a model's JSON training record."""
    path = weights_file(name, weights_dir)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
