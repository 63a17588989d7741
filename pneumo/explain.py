"""Explanation: Grad-CAM and Grad-CAM++ heat maps, and their overlays on the radiograph.

The reference implementation is tf-keras-vis (``Gradcam`` / ``GradcamPlusPlus`` on the model
with ``ReplaceToLinear``, scoring the pneumonia output; see :func:`library_cams`).
:class:`CamExplainer` computes the same maps with tf-keras-vis's formulas, but from one traced
graph that returns the probability, the last feature map and its gradient for a whole batch at
once: prediction and both CAM methods share a single forward/backward pass. A test keeps the
two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import keras
import numpy as np

from pneumo import config

METHODS = ("Grad-CAM", "Grad-CAM++")
_EPS = keras.backend.epsilon()  # tf-keras-vis's normalisation epsilon


@dataclass
class Explanation:
    """Per image: calibrated probability, a 7x7 map per method (0..1), pooled features."""

    probability: float
    cams: dict[str, np.ndarray]
    features: np.ndarray  # (1280,) global-average-pooled last feature map (for the OOD check)


def _normalize(cam: np.ndarray) -> np.ndarray:
    """tf-keras-vis ``normalize``: per-sample min-max to 0..1."""
    axes = tuple(range(1, cam.ndim))
    lo, hi = cam.min(axis=axes, keepdims=True), cam.max(axis=axes, keepdims=True)
    return (cam - lo) / (hi - lo + _EPS)


def gradcam_from_gradients(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: ReLU(sum_k mean_ij(dS/dA_k) * A_k), normalised. Inputs (N, h, w, K)."""
    weights = grads.mean(axis=(1, 2), keepdims=True)
    return _normalize(np.maximum((features * weights).sum(-1), 0.0))


def gradcam_plus_plus_from_gradients(
    features: np.ndarray, grads: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al.) with the exponential score, as tf-keras-vis does."""
    exp_score = np.exp(scores.astype("float64")).reshape(-1, 1, 1, 1)
    g = grads.astype("float64")
    first = exp_score * g
    second = first * g
    third = second * g
    global_sum = features.sum(axis=(1, 2), keepdims=True)
    denom = 2.0 * second + third * global_sum
    denom = denom + (second == 0.0)
    alphas = second / denom
    norm = alphas.sum(axis=(1, 2), keepdims=True)
    alphas = alphas / (norm + (norm == 0.0))
    weights = (np.maximum(first, 0.0) * alphas).sum(axis=(1, 2), keepdims=True)
    return _normalize(np.maximum((weights * features).sum(-1), 0.0)).astype("float32")


class CamExplainer:
    """Probability + Grad-CAM + Grad-CAM++ for a batch from one traced forward/backward pass."""

    def __init__(self, model: keras.Model, layer: str = config.CAM_LAYER):
        import tensorflow as tf

        features_model = keras.Model(
            model.input,
            [model.get_layer(config.LOGIT_LAYER).output, model.get_layer(layer).output],
        )
        calibration = model.get_layer(config.CALIBRATION_LAYER)
        spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS],
                             tf.float32)

        def forward_backward(x):
            with tf.GradientTape() as tape:
                logit, features = features_model(x, training=False)
                tape.watch(features)
                # The calibrated output before its sigmoid (what ReplaceToLinear exposes).
                score = tf.matmul(logit, calibration.kernel) + calibration.bias
            grads = tape.gradient(score, features)
            return tf.sigmoid(score)[:, 0], score[:, 0], features, grads

        self._run = tf.function(forward_backward, input_signature=[spec], reduce_retracing=True)

    def explain(self, images: np.ndarray, batch_size: int = 16) -> list[Explanation]:
        """(N, 224, 224, 3) RGB 0-255 -> one Explanation per image."""
        images = np.asarray(images, dtype="float32")
        if images.ndim == 3:
            images = images[None]
        out: list[Explanation] = []
        for i in range(0, len(images), batch_size):
            prob, score, feats, grads = (t.numpy() for t in self._run(images[i:i + batch_size]))
            cam = gradcam_from_gradients(feats, grads)
            cam_pp = gradcam_plus_plus_from_gradients(feats, grads, score)
            pooled = feats.mean(axis=(1, 2))
            out.extend(
                Explanation(float(p), {METHODS[0]: c, METHODS[1]: cpp}, f)
                for p, c, cpp, f in zip(prob, cam, cam_pp, pooled)
            )
        return out


def library_cams(model: keras.Model, images: np.ndarray, method: str = METHODS[0]) -> np.ndarray:
    """The tf-keras-vis reference: a fresh Gradcam/GradcamPlusPlus, not upsampled (N, 7, 7).

    This is the naive per-call path (it clones the model); the benchmark and tests use it.
    The clone is made here rather than by tf-keras-vis: its ``clone=True`` copies weights with
    ``set_weights``, which leaves Keras 3's Normalization layer unfinalised (wrong input scale).
    """
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    cls = Gradcam if method == METHODS[0] else GradcamPlusPlus
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    cam = cls(clone, model_modifier=ReplaceToLinear(), clone=False)
    maps = cam(lambda output: output[:, 0], np.asarray(images, dtype="float32"),
               penultimate_layer=config.CAM_LAYER, seek_penultimate_conv_layer=False,
               expand_cam=False)
    return np.asarray(maps)


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stretch a coarse map to (height, width), matching how the image was stretched to 224."""
    return cv2.resize(cam.astype("float32"), (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def colorize(cam: np.ndarray) -> np.ndarray:
    """0..1 map -> RGB uint8 with the Turbo colour scale (blue low, red high)."""
    heat = cv2.applyColorMap(np.round(cam * 255).astype("uint8"), cv2.COLORMAP_TURBO)
    return cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, cam: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Colour the radiograph where the map is high (RGB uint8, any size).

    Each pixel's blend weight is ``opacity * cam``: regions that did not move the score stay
    as they are, so the anatomy remains readable under the heat map.
    """
    up = upsample(cam, rgb.shape[0], rgb.shape[1])
    alpha = (opacity * up)[..., None]
    blended = rgb.astype("float32") * (1.0 - alpha) + colorize(up).astype("float32") * alpha
    return np.round(blended).astype("uint8")


def heatmap_strength(probability: float, threshold: float,
                     floor: float = config.HEATMAP_MIN_STRENGTH) -> float:
    """How much of the chosen opacity a heat map gets: 1 at or above the threshold; below it
    ``probability / threshold``, but at least ``floor`` (a map shown on request stays visible).

    The map itself is min-max normalised per image, so without this a 5 % image would glow as
    red as a 99 % one.
    """
    if threshold <= 0 or probability >= threshold:
        return 1.0
    return float(min(1.0, max(floor, probability / threshold)))


def draw_outline(rgb: np.ndarray, outline: np.ndarray,
                 colour: tuple[int, int, int] = config.LUNG_OUTLINE_RGB) -> np.ndarray:
    """A copy of ``rgb`` with the pixels where ``outline`` (bool, same height and width) is set
    painted in ``colour``."""
    out = np.array(rgb, dtype="uint8", copy=True)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    out[np.asarray(outline, bool)] = colour
    return out


def colour_scale(width: int = 256, height: int = 14) -> np.ndarray:
    """A horizontal legend strip of the colour scale, low on the left."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype="float32"), (height, 1))
    return colorize(ramp)
