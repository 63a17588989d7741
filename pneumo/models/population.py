"""The pixel population check: "this radiograph looks older than the children pneumo was
trained on", for images whose header states no age (PNG, JPEG, DICOM without one).

A logistic regression on the classifier's pooled features (the 1280 numbers the OOD check
also reads, so it costs a dot product per image), standardised, with a threshold on its
probability. Fitted by ``python -m pneumo.population --refit`` (:mod:`pneumo.cli.population`) on
the training population's images (Kermany train and validation carve-out) against older patients
(NIH ChestX-ray14 sample), every image also under the classifier's own augmentation so that file
format, framing and sharpness do not tell the two apart; patient-grouped cross-validation picks
the regularisation and the threshold. Stored in ``weights/population.npz``; its record with the
cross-validated figures in ``weights/population.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo import config


@dataclass
class PopulationCheck:
    """P(older than the training population | pooled features) and the flag threshold."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (D,)
    intercept: float
    threshold: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability "older" for (N, D) or (D,) pooled features."""
        x = (np.atleast_2d(features).astype("float64") - self.mean) / self.scale
        z = np.clip(x @ self.coef + self.intercept, -50, 50)
        return 1.0 / (1.0 + np.exp(-z))

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) >= self.threshold

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=self.intercept, threshold=self.threshold)


def population_file(weights_dir: Path | None = None) -> Path:
    return Path(weights_dir or config.WEIGHTS_DIR) / config.POPULATION_FILE


def read_record(weights_dir: Path | None = None) -> dict | None:
    """``weights/population.json`` (the fit and its cross-validated figures), or None."""
    import json

    path = Path(weights_dir or config.WEIGHTS_DIR) / config.POPULATION_RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else None


def load_population(path: Path | None = None) -> PopulationCheck | None:
    """The check stored beside the model, or None when there is none."""
    path = Path(path) if path is not None else population_file()
    if not path.exists():
        return None
    with np.load(path) as z:
        return PopulationCheck(z["mean"], z["scale"], z["coef"], float(z["intercept"]),
                               float(z["threshold"]))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, weights: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Standardise, then an L2 logistic regression (scikit-learn, lbfgs, balanced classes).
    Returns (mean, scale, coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype="float64")
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    model.fit((x - mean) / scale, y, sample_weight=weights)
    return mean, scale, model.coef_[0], float(model.intercept_[0])


def threshold_for(scores: np.ndarray, max_flagged: float) -> float:
    """The smallest threshold that flags at most ``max_flagged`` of ``scores`` (children)."""
    scores = np.sort(np.asarray(scores, dtype="float64"))
    allowed = int(np.floor(max_flagged * len(scores)))
    if allowed >= len(scores):
        return 0.0
    cut = scores[len(scores) - allowed - 1]  # the highest score that must stay unflagged
    return float(np.nextafter(cut, np.inf))
