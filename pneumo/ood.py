"""Out-of-distribution check: "this does not look like a chest X-ray".

Two tests, either of which flags an image:
1. colour: radiographs are grey; a mean HSV saturation above ``SATURATION_LIMIT`` is not one;
2. appearance: the Mahalanobis distance of the model's pooled features (in a PCA subspace
   fitted on training radiographs) above a threshold set on validation radiographs.

The reference statistics live in ``weights/ood.npz``, written by :func:`fit` (called by
``python -m pneumo.evaluate``) because they belong to one trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pneumo import config

OOD_FILE = "ood.npz"
SATURATION_LIMIT = 0.12  # mean saturation (0..1) above which an image is not a grey radiograph
PCA_COMPONENTS = 64
VALIDATION_QUANTILE = 0.995  # share of validation radiographs that must pass
WARNING = ("This does not look like a chest X-ray. pneumo was trained on pediatric chest "
           "radiographs only; the probability below is unreliable.")


def saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation, 0 (grey) .. 1."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return float(hsv[..., 1].mean() / 255.0)


@dataclass
class OodDetector:
    """Mahalanobis distance in a PCA subspace of pooled features, plus a colour test."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, k)
    inverse_variance: np.ndarray  # (k,)
    residual_variance: float  # per dimension, outside the subspace
    threshold: float

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Distance for (N, D) or (D,) features: Mahalanobis in the subspace + residual term."""
        f = np.atleast_2d(features).astype("float64") - self.mean
        z = f @ self.components
        residual = np.sum(f * f, axis=1) - np.sum(z * z, axis=1)
        d2 = np.sum(z * z * self.inverse_variance, axis=1) + residual / self.residual_variance
        return np.sqrt(np.maximum(d2, 0.0))

    def is_outlier(self, rgb: np.ndarray, features: np.ndarray) -> bool:
        return saturation(rgb) > SATURATION_LIMIT or bool(self.distance(features)[0] > self.threshold)

    def __call__(self, reading) -> str | None:
        """The warning for a Reading (needs ``model_input`` and ``features``), or None."""
        if reading.features is None or reading.model_input is None:
            return None
        return WARNING if self.is_outlier(reading.model_input, reading.features) else None

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components,
                 inverse_variance=self.inverse_variance,
                 residual_variance=self.residual_variance, threshold=self.threshold)


def fit(train_features: np.ndarray, val_features: np.ndarray,
        components: int = PCA_COMPONENTS, quantile: float = VALIDATION_QUANTILE) -> OodDetector:
    """Fit the subspace on training radiographs; set the threshold on validation ones."""
    x = np.asarray(train_features, dtype="float64")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, vt.shape[0])
    variance = s**2 / max(len(x) - 1, 1)
    residual = float(max(variance[k:].sum() / max(x.shape[1] - k, 1), 1e-12))
    detector = OodDetector(mean, vt[:k].T, 1.0 / np.maximum(variance[:k], 1e-12), residual, 0.0)
    detector.threshold = float(np.quantile(detector.distance(val_features), quantile))
    return detector


def load_detector(path: Path | None = None) -> OodDetector | None:
    """The detector stored beside the model, or None when there is none."""
    path = Path(path) if path is not None else config.weights_path(OOD_FILE)
    if not path.exists():
        return None
    with np.load(path) as z:
        return OodDetector(z["mean"], z["components"], z["inverse_variance"],
                           float(z["residual_variance"]), float(z["threshold"]))
