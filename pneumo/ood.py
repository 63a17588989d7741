"""Out-of-distribution check: "this does not look like a chest X-ray".

Three tests, any of which flags an image (the texture test is skipped for an original the
quality check found small, :func:`pneumo.quality.suppress_ood_texture`):
1. colour: radiographs are grey; a mean HSV saturation above ``SATURATION_LIMIT`` is not one;
2. texture: the variance of the Laplacian of the 224 px input outside the range of training
   radiographs (widened by ``TEXTURE_MARGIN``): flat colours, gradients and blurred pictures
   below it, noise and printed text above it;
3. appearance: the Mahalanobis distance of the model's pooled features (in a PCA subspace
   fitted on training radiographs) above a threshold set on validation radiographs.

The reference statistics live in ``weights/ood.npz``, written by :func:`fit` (called by
``python -m pneumo.evaluate``) because they belong to one trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pneumo import config, quality

OOD_FILE = "ood.npz"
SATURATION_LIMIT = 0.12  # mean saturation (0..1) above which an image is not a grey radiograph
PCA_COMPONENTS = 64
VALIDATION_QUANTILE = 0.995  # share of validation radiographs that must pass
TEXTURE_QUANTILES = (0.001, 0.999)  # of training radiographs' Laplacian variance
TEXTURE_MARGIN = 2.0  # the texture range is widened by this factor on both sides
WARNING = ("This does not look like a chest X-ray. pneumo was trained on pediatric chest "
           "radiographs only; the probability below is unreliable.")


def texture(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (sharpness / amount of fine structure)."""
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


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
    texture_range: tuple[float, float] = (0.0, float("inf"))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Distance for (N, D) or (D,) features: Mahalanobis in the subspace + residual term."""
        f = np.atleast_2d(features).astype("float64") - self.mean
        z = f @ self.components
        residual = np.sum(f * f, axis=1) - np.sum(z * z, axis=1)
        d2 = np.sum(z * z * self.inverse_variance, axis=1) + residual / self.residual_variance
        return np.sqrt(np.maximum(d2, 0.0))

    def is_outlier(self, rgb: np.ndarray, features: np.ndarray, check_texture: bool = True) -> bool:
        """``rgb`` is the 224x224 model input; ``features`` its pooled model features.

        ``check_texture=False`` skips the texture test (for a small original, which is smooth
        once enlarged; see :func:`pneumo.quality.suppress_ood_texture`).
        """
        low, high = self.texture_range
        return (saturation(rgb) > SATURATION_LIMIT
                or (check_texture and not low <= texture(rgb) <= high)
                or bool(self.distance(features)[0] > self.threshold))

    def __call__(self, reading) -> str | None:
        """The warning for a Reading (needs ``model_input`` and ``features``), or None.

        A reading whose quality report says the original was small skips the texture test.
        """
        if reading.features is None or reading.model_input is None:
            return None
        check_texture = not quality.suppress_ood_texture(getattr(reading, "quality", None))
        return WARNING if self.is_outlier(reading.model_input, reading.features,
                                          check_texture) else None

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components,
                 inverse_variance=self.inverse_variance,
                 residual_variance=self.residual_variance, threshold=self.threshold,
                 texture_range=np.asarray(self.texture_range))


def fit(train_features: np.ndarray, val_features: np.ndarray,
        train_images: np.ndarray | None = None,
        components: int = PCA_COMPONENTS, quantile: float = VALIDATION_QUANTILE) -> OodDetector:
    """Fit the subspace (and texture range) on training radiographs; threshold on validation."""
    x = np.asarray(train_features, dtype="float64")
    mean = x.mean(axis=0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, vt.shape[0])
    variance = s**2 / max(len(x) - 1, 1)
    residual = float(max(variance[k:].sum() / max(x.shape[1] - k, 1), 1e-12))
    detector = OodDetector(mean, vt[:k].T, 1.0 / np.maximum(variance[:k], 1e-12), residual, 0.0)
    detector.threshold = float(np.quantile(detector.distance(val_features), quantile))
    if train_images is not None and len(train_images):
        values = np.array([texture(img) for img in train_images])
        low, high = np.quantile(values, TEXTURE_QUANTILES)
        detector.texture_range = (float(low / TEXTURE_MARGIN), float(high * TEXTURE_MARGIN))
    return detector


def load_detector(path: Path | None = None) -> OodDetector | None:
    """The detector stored beside the model, or None when there is none."""
    path = Path(path) if path is not None else config.weights_path(OOD_FILE)
    if not path.exists():
        return None
    with np.load(path) as z:
        texture_range = tuple(float(v) for v in z["texture_range"]) if "texture_range" in z else (
            0.0, float("inf"))
        return OodDetector(z["mean"], z["components"], z["inverse_variance"],
                           float(z["residual_variance"]), float(z["threshold"]), texture_range)
