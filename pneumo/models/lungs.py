"""Lung fields: a small U-Net segmenter, mask clean-up, and how much of a heat map lies in the lungs.

The segmenter takes exactly the classifier's input (224x224 RGB 0-255 from
:func:`pneumo.io.images.load_image`), works at ``config.LUNG_INPUT_SIZE`` inside the model and
returns a 224x224 lung probability. :func:`clean_mask` keeps the two largest components and
fills holes. :func:`heatmap_in_lungs` measures a Grad-CAM map against a mask the way the app
draws it (the same upsampling as the overlay).

:meth:`LungSegmenter.load` runs the network through OpenVINO when it can
(:func:`pneumo.models.runtime.load_network`, converted from the ``.keras`` file once and cached),
else through Keras, the reference; this module imports Keras only for the Keras path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

from pneumo import config
from pneumo.data.lung_masks import resize_mask

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

NO_LUNGS_WARNING = ("No plausible lung fields were found in this image. It may not be a frontal "
                    "chest X-ray, or it is cut off, rotated or inverted.")
ONE_LUNG_WARNING = ("Only one lung field was found: the image may be cut off or show one side "
                    "only. pneumo reads frontal chest X-rays showing both lungs.")
OUTSIDE_LUNGS_CAUTION = ("Most of the heat map lies outside the lungs: the score was driven by "
                         "regions outside the lungs; read with care.")


def _conv_block(x, filters: int, name: str):
    import keras

    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_segmenter(base_filters: int = config.LUNG_BASE_FILTERS,
                    work_size: int = config.LUNG_INPUT_SIZE, depth: int = 4) -> keras.Model:
    """U-Net: 224x224x3 RGB 0-255 in, 224x224x1 lung probability out."""
    import keras

    size = config.IMAGE_SIZE
    inp = keras.Input((size, size, config.CHANNELS), name="image")
    x = keras.layers.Resizing(work_size, work_size, interpolation="area", name="to_work_size")(inp)
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = keras.layers.UpSampling2D(name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, base_filters * 2**level, f"dec{level}")
    x = keras.layers.Conv2D(1, 1, name="lung_logit")(x)
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="to_input_size")(x)
    out = keras.layers.Activation("sigmoid", name="lung_probability")(x)
    return keras.Model(inp, out, name="lung_fields")


def clean_mask(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probability map -> boolean mask: the two largest components, holes filled."""
    mask = np.asarray(probability) >= threshold
    labels, n = ndimage.label(mask)
    if n > 2:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = 1 + np.argsort(sizes)[::-1][:2]
        mask = np.isin(labels, keep)
    return ndimage.binary_fill_holes(mask)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


@dataclass(frozen=True)
class LungFields:
    """A cleaned lung mask at the model's input size and what it says about the image."""

    mask: np.ndarray  # (224, 224) bool
    area: float  # share of the image
    components: int

    @property
    def lesser_side_share(self) -> float:
        """Share of the mask on the image half that holds less of it (0.5: balanced; 0: one side)."""
        total = float(self.mask.sum())
        if total == 0:
            return 0.0
        left = float(self.mask[:, : self.mask.shape[1] // 2].sum())
        return min(left, total - left) / total

    @property
    def problem(self) -> str | None:
        """A warning when the mask is not a plausible pair of lungs, else None: no lungs, an
        implausible area, or (nearly) all of it on one half of the image."""
        lo, hi = config.LUNG_AREA_RANGE
        if self.components == 0 or not lo <= self.area <= hi:
            return NO_LUNGS_WARNING
        if self.lesser_side_share < config.LUNG_MIN_SIDE_SHARE:
            return ONE_LUNG_WARNING
        return None

    def outline(self, height: int, width: int) -> np.ndarray:
        """Boundary pixels of the mask at (height, width), bool, about 2 px wide at 768 px."""
        m = resize_mask(self.mask, height, width).astype("uint8")
        thickness = max(1, round(max(height, width) / 384))
        kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), "uint8")
        return cv2.morphologyEx(m, cv2.MORPH_GRADIENT, kernel).astype(bool)


def lung_fields(probability: np.ndarray) -> LungFields:
    mask = clean_mask(probability)
    _, n = ndimage.label(mask)
    return LungFields(mask=mask, area=float(mask.mean()), components=int(n))


def heatmap_in_lungs(cam: np.ndarray, mask: np.ndarray) -> tuple[float, bool]:
    """(share of heat-map mass inside the lungs, whether its peak lies inside them).

    ``cam`` is a coarse map (e.g. 7x7, 0..1); it is upsampled to the mask's size exactly as the
    overlay upsamples it. An all-zero map has share NaN and no peak inside.
    """
    from pneumo.models.explain import upsample

    mask = np.asarray(mask, bool)
    up = upsample(cam, *mask.shape)
    total = float(up.sum())
    if total <= 0:
        return float("nan"), False
    share = float(up[mask].sum() / total)
    peak = np.unravel_index(int(np.argmax(up)), up.shape)
    return share, bool(mask[peak])


def _lung_model_path(path: str | Path | None) -> Path:
    path = Path(path) if path is not None else config.weights_path(config.LUNG_MODEL_FILE)
    if not path.exists():
        raise FileNotFoundError(
            f"No lung-field model at {path}. Train one with "
            "`python -m pneumo.train_lungs --data PATH/lung_masks`.")
    return path


def load_segmenter_model(path: str | Path | None = None):
    """The Keras lung-field model (the reference)."""
    import keras

    return keras.saving.load_model(_lung_model_path(path), compile=False)


class LungSegmenter:
    """Lung masks for batches of 224x224 RGB inputs: through a Keras model (one traced graph)
    or, given ``network`` instead, its OpenVINO conversion (:func:`pneumo.models.runtime.load_network`)."""

    def __init__(self, model=None, network=None):
        if (model is None) == (network is None):
            raise ValueError("give the Keras model or the OpenVINO network, one of them")
        self.model, self.network = model, network
        self.runtime = "keras" if network is None else network.runtime
        if network is not None:
            self._run = lambda x: network(x)[0][..., 0]
            return
        import tensorflow as tf

        spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS],
                             tf.float32)
        run = tf.function(lambda x: model(x, training=False)[..., 0], input_signature=[spec],
                          reduce_retracing=True)
        self._run = lambda x: run(x).numpy()

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, 224, 224, 3) RGB 0-255 -> (N, 224, 224) lung probability."""
        images = np.asarray(images, dtype="float32")
        if images.ndim == 3:
            images = images[None]
        out = [self._run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], "float32")

    def fields(self, images: np.ndarray, batch_size: int = 32) -> list[LungFields]:
        """Cleaned lung fields per image."""
        return [lung_fields(p) for p in self.probabilities(images, batch_size)]

    @classmethod
    def load(cls, path: str | Path | None = None, runtime: str | None = None,
             cache_dir: str | Path | None = None) -> LungSegmenter:
        """From ``weights/lungs.keras`` (or ``path``): through OpenVINO unless ``runtime`` (default
        ``config.RUNTIME``) is "keras" or OpenVINO cannot be used (then Keras, with a log line)."""
        path = _lung_model_path(path)
        if (runtime or config.RUNTIME) != "keras":
            from pneumo.models import runtime as runtimes

            try:
                return cls(network=runtimes.load_network(path, runtimes.LUNGS,
                                                         load_segmenter_model, cache_dir))
            except Exception as err:
                log.warning("lung-field model runs on Keras (OpenVINO not used: %s)", err)
        return cls(load_segmenter_model(path))


def heatmap_report(cams: dict[str, np.ndarray], masks: np.ndarray, labels: np.ndarray) -> dict:
    """Per CAM method and class: mean share of heat-map mass in the lungs and share of peaks there.

    A map with no positive evidence at all (``empty_maps``: nothing raised the score anywhere)
    has no mass to place and counts as a peak outside the lungs.

    ``cams`` maps a method name to (N, h, w) maps, ``masks`` is (N, H, W) bool, ``labels`` (N,).
    Also gives the mean share of the image the lungs cover, for comparison.
    """
    labels = np.asarray(labels)
    out: dict = {"n": int(len(labels)), "lung_area": {}}
    for label, name in enumerate(config.CLASS_NAMES):
        chosen = labels == label
        if chosen.any():
            out["lung_area"][name] = float(np.mean([m.mean() for m in masks[chosen]]))
    for method, maps in cams.items():
        measured = [heatmap_in_lungs(c, m) for c, m in zip(maps, masks)]
        shares = np.array([s for s, _ in measured])
        peaks = np.array([p for _, p in measured])
        per_class = {}
        for label, name in enumerate(config.CLASS_NAMES):
            chosen = labels == label
            if chosen.any():
                empty = np.isnan(shares[chosen])
                per_class[name] = {"n": int(chosen.sum()),
                                   "mass_in_lungs": float(np.nanmean(shares[chosen]))
                                   if not empty.all() else float("nan"),
                                   "peak_in_lungs": float(np.mean(peaks[chosen])),
                                   "empty_maps": float(np.mean(empty))}
        out[method] = per_class
    return out
