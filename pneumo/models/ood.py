"""Out-of-distribution check: "this does not look like a chest X-ray".

Three tests, any of which flags an image (the texture test is skipped for an original the
quality check found small, :func:`pneumo.models.quality.suppress_ood_texture`):
1. colour: radiographs are grey; a mean HSV saturation above ``SATURATION_LIMIT`` is not one;
2. texture: the variance of the Laplacian of the 224 px input outside the range of training
   radiographs (widened by ``TEXTURE_MARGIN``): flat colours, gradients and blurred pictures
   below it, noise and printed text above it;
3. appearance: the Mahalanobis distance of the model's pooled features (in a PCA subspace
   fitted on training radiographs, each with ``AUGMENTED_COPIES`` copies under the classifier's
   own framing/acquisition augmentation, :mod:`pneumo.data.augment`) above the
   ``VALIDATION_QUANTILE`` quantile of validation radiographs (originals and augmented copies
   alike), so ordinary variation in framing, exposure and compression counts as a radiograph.

The reference statistics live in ``weights/ood.npz``, written by :func:`fit_reference` (called
by ``python -m pneumo.evaluate``) because they belong to one trained model. To refit only them:

    python -m pneumo.ood --refit --data ../shared/data/chest_xray

which writes ``weights/ood.npz`` and the ``"ood"`` section of ``weights/metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pneumo import config
from pneumo.evaluation import artifacts
from pneumo.models import quality

SATURATION_LIMIT = 0.12  # mean saturation (0..1) above which an image is not a grey radiograph
PCA_COMPONENTS = 64
VALIDATION_QUANTILE = 0.995  # share of validation radiographs that must pass
# Augmented copies per radiograph (pneumo.data.augment) added to the reference and to the threshold
# set; 0 is the first rule (originals only). Seeds fixed so a refit is reproducible.
AUGMENTED_COPIES = 2
TRAIN_SEED, VAL_SEED = 0, 1
TEXTURE_QUANTILES = (0.001, 0.999)  # of training radiographs' Laplacian variance
TEXTURE_MARGIN = 2.0  # the texture range is widened by this factor on both sides
WARNING = ("This does not look like a chest X-ray. pneumo reads pediatric chest radiographs "
           "only, so it gives no reading.")


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
        once enlarged; see :func:`pneumo.models.quality.suppress_ood_texture`).
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
    path = Path(path) if path is not None else artifacts.ood_file()
    if not path.exists():
        return None
    with np.load(path) as z:
        texture_range = tuple(float(v) for v in z["texture_range"]) if "texture_range" in z else (
            0.0, float("inf"))
        return OodDetector(z["mean"], z["components"], z["inverse_variance"],
                           float(z["residual_variance"]), float(z["threshold"]), texture_range)


def augmented_copies(images: np.ndarray, copies: int, seed: int, chunk: int = 256):
    """Yield uint8 chunks of augmented copies (:func:`pneumo.data.augment.augment_example`, zero lung
    mask, rounded like a decoded image): ``copies`` passes over ``images``, in order."""
    import tensorflow as tf

    from pneumo.data.augment import augment_example

    tf.random.set_seed(seed)
    mask = tf.zeros([config.IMAGE_SIZE, config.IMAGE_SIZE, 1], tf.float32)

    @tf.function
    def one(image):
        out, _ = augment_example(image, mask)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    for _ in range(copies):
        for start in range(0, len(images), chunk):
            yield np.stack([one(tf.constant(img)).numpy() for img in images[start:start + chunk]])


def pooled_features(model, images: np.ndarray | list, batch_size: int = 32) -> np.ndarray:
    """The model's pooled features (``avg_pool``; an ensemble's first member's) for uint8
    images, or for chunks of them."""
    import keras

    from pneumo.models.ensemble import first_member_pooled

    pooled = keras.Model(model.input, first_member_pooled(model))
    chunks = [images] if isinstance(images, np.ndarray) else images
    out = [pooled.predict(np.asarray(c, dtype="float32"), batch_size=batch_size, verbose=0)
           for c in chunks]
    return np.concatenate(out) if out else np.zeros((0, 0))


def fit_reference(model, train_images: np.ndarray, val_images: np.ndarray,
                  train_features: np.ndarray | None = None,
                  val_features: np.ndarray | None = None,
                  copies: int = AUGMENTED_COPIES) -> OodDetector:
    """The rule in use: :func:`fit` on training radiographs plus ``copies`` augmented copies of
    each, threshold on validation radiographs plus ``copies`` augmented copies of each; texture
    range from the training originals. Features of the originals may be passed in."""
    if train_features is None:
        train_features = pooled_features(model, train_images)
    if val_features is None:
        val_features = pooled_features(model, val_images)
    train_all, val_all = [np.asarray(train_features)], [np.asarray(val_features)]
    if copies > 0:
        train_all.append(pooled_features(model, augmented_copies(train_images, copies, TRAIN_SEED)))
        val_all.append(pooled_features(model, augmented_copies(val_images, copies, VAL_SEED)))
    return fit(np.concatenate(train_all), np.concatenate(val_all), train_images=train_images)


def rule_text(copies: int = AUGMENTED_COPIES) -> str:
    return (f"saturation > {SATURATION_LIMIT}, Laplacian variance outside the training "
            f"radiographs' range, or feature distance above the {VALIDATION_QUANTILE:.1%} quantile "
            f"of validation radiographs; reference and quantile each over the originals plus "
            f"{copies} copies under the training augmentation (rule changed after the first "
            f"rule's test figures were seen; see README)")


def report(detector: OodDetector, results: dict, copies: int = AUGMENTED_COPIES) -> dict:
    """The ``"ood"`` section of metrics.json: ``results[split]`` has ``images`` and
    ``features`` for "val" and "test" (the test rate is reported, never used to fit)."""
    rates = {}
    for split in ("val", "test"):
        r = results[split]
        flags = [detector.is_outlier(img, f) for img, f in zip(r["images"], r["features"])]
        rates[f"{split}_flagged"] = float(np.mean(flags))
    return {"threshold": detector.threshold, "texture_range": list(detector.texture_range),
            **rates, "rule": rule_text(copies)}
