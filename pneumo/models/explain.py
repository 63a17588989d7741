"""Explanation: Grad-CAM and Grad-CAM++ heat maps, and their overlays on the radiograph.

The reference implementation is tf-keras-vis (``Gradcam`` / ``GradcamPlusPlus`` on the model
with ``ReplaceToLinear``, scoring the pneumonia output; see :func:`library_cams`).

pneumo computes the same maps from the forward pass alone. The head after the last feature map
``A`` (h x w x K) is global average pooling, a linear logit ``w . mean_ij(A) + c`` and a linear
calibration ``a * logit + b`` (the sigmoid comes after the score tf-keras-vis differentiates), so
the gradient of the score is the same at every position: ``dS/dA_ijk = a * w_k / (h * w)``.
With that constant gradient Grad-CAM is ``ReLU(sum_k a w_k A_k)`` normalised (the class
activation map), and Grad-CAM++'s formula collapses to one weight per channel
(:func:`gradcam_plus_plus_from_features`). So probability, both maps and the pooled features
(for the OOD check) come from ONE forward pass, with no gradient tape: :class:`CamExplainer`
runs it in Keras, :mod:`pneumo.models.runtime` in a faster runtime. Tests keep both equal to
tf-keras-vis.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pneumo import config
from pneumo.evaluation.metrics import flagged

METHODS = ("Grad-CAM", "Grad-CAM++")
_EPS = 1e-7  # tf-keras-vis's normalisation epsilon: keras.backend.epsilon() (a test checks it)


@dataclass
class Explanation:
    """Per image: calibrated probability, a 7x7 map per method (0..1), pooled features."""

    probability: float
    cams: dict[str, np.ndarray]
    features: np.ndarray  # (1280,) global-average-pooled last feature map (for the OOD check)


@dataclass(frozen=True)
class Head:
    """The linear part of the model after the last feature map: ``score = a * (w . pool(A) + c) + b``.

    ``probability = sigmoid(score)``; ``score`` is what tf-keras-vis differentiates.
    """

    kernel: np.ndarray  # (K,) logit weights w
    scale: float  # calibration a
    bias: float  # calibration b

    @classmethod
    def of(cls, model) -> Head:
        """Read the head's weights from the Keras classifier
        (:func:`pneumo.models.classifier.build_classifier`)."""
        logit, calibration = model.get_layer(config.LOGIT_LAYER), model.get_layer(config.CALIBRATION_LAYER)
        pool = model.get_layer("avg_pool")
        if (type(pool).__name__ != "GlobalAveragePooling2D"
                or pool.input is not model.get_layer(config.CAM_LAYER).output
                or logit.activation.__name__ != "linear"
                or calibration.activation.__name__ != "sigmoid"):
            raise ValueError("the closed-form CAMs need the head feature map -> global average "
                             "pool -> linear logit -> sigmoid calibration")
        kernel = np.asarray(logit.get_weights()[0], "float32")
        a, b = calibration.get_weights()
        return cls(kernel.reshape(-1), float(np.ravel(a)[0]), float(np.ravel(b)[0]))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """(N,) calibrated scores before the sigmoid, from (N,) or (N, 1) logits (float32 as Keras)."""
        logits = np.asarray(logits, "float32").reshape(-1)
        return logits * np.float32(self.scale) + np.float32(self.bias)

    def gradient(self, height: int, width: int) -> np.ndarray:
        """(K,) dS/dA_ijk, the same at every position (i, j): ``a * w_k / (h * w)``."""
        return (self.kernel * np.float32(self.scale)) / np.float32(height * width)


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


def gradcam_from_features(features: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM with a gradient that is the same at every position: (N, h, w, K), (K,) -> (N, h, w).

    The mean of a constant gradient over positions is the gradient itself, so this is
    :func:`gradcam_from_gradients` without building the (N, h, w, K) gradient.
    """
    return _normalize(np.maximum(features @ gradient.astype(features.dtype), 0.0))


def gradcam_plus_plus_from_features(
    features: np.ndarray, gradient: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Grad-CAM++ with a gradient that is the same at every position (closed form).

    :func:`gradcam_plus_plus_from_gradients` with ``g_ijk = g_k``: the alphas
    ``g^2 / (2 g^2 + g^3 sum_ij A)`` no longer depend on (i, j), so per channel they normalise
    to ``1 / (h w)`` (0 where ``g_k == 0``) and the weight is ``exp(S) * ReLU(g_k)``. The same
    arithmetic, zero guards included, on (N, 1, 1, K) arrays instead of (N, h, w, K).
    """
    n, h, w, _ = features.shape
    exp_score = np.exp(np.asarray(scores, "float64")).reshape(-1, 1)
    g = gradient.astype("float64")[None, :]
    first = exp_score * g  # (N, K)
    second = first * g
    third = second * g
    global_sum = features.sum(axis=(1, 2), dtype="float64")  # (N, K)
    denom = 2.0 * second + third * global_sum
    denom = denom + (second == 0.0)
    alpha = second / denom  # the same at all h * w positions
    norm = alpha * (h * w)
    alpha = alpha / (norm + (norm == 0.0))
    weights = np.maximum(first, 0.0) * alpha * (h * w)  # sum over the h * w equal terms
    cam = np.einsum("nijk,nk->nij", features, weights)
    return _normalize(np.maximum(cam, 0.0)).astype("float32")


def explanations(probabilities: np.ndarray, logits: np.ndarray, features: np.ndarray,
                 head: Head) -> list[Explanation]:
    """One forward pass's outputs -> one Explanation per image (both maps, pooled features).

    ``features`` is the last feature map (N, h, w, K) as the model computes it (float32).
    """
    features = np.asarray(features, "float32")
    _, h, w, _ = features.shape
    gradient = head.gradient(h, w)
    cam = gradcam_from_features(features, gradient)
    cam_pp = gradcam_plus_plus_from_features(features, gradient, head.scores(logits))
    pooled = features.mean(axis=(1, 2))
    return [Explanation(float(p), {METHODS[0]: c, METHODS[1]: cpp}, f)
            for p, c, cpp, f in zip(np.ravel(probabilities), cam, cam_pp, pooled)]


def pixel_batch(images: np.ndarray) -> np.ndarray:
    """(N, 224, 224, 3) or one (224, 224, 3) image -> a batch for :meth:`ForwardExplainer.forward`.

    uint8 pixels (what the decoder gives) stay uint8, so a runtime that takes them converts
    inside the model instead of copying the batch to float32; anything else becomes float32."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = images.astype("float32", copy=False)
    return images[None] if images.ndim == 3 else images


class ForwardExplainer:
    """Probability + Grad-CAM + Grad-CAM++ + pooled features from one forward pass per batch.

    Subclasses give :meth:`forward`: a float32 batch (N, 224, 224, 3) RGB 0-255 ->
    (probabilities (N,), logits (N,), last feature maps (N, h, w, K)); and ``head``.
    """

    runtime = "?"
    head: Head

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def explain(self, images: np.ndarray, batch_size: int = 16) -> list[Explanation]:
        """(N, 224, 224, 3) RGB 0-255 -> one Explanation per image (see :func:`pixel_batch`)."""
        images = pixel_batch(images)
        out: list[Explanation] = []
        for i in range(0, len(images), batch_size):
            out.extend(explanations(*self.forward(images[i:i + batch_size]), self.head))
        return out


class CamExplainer(ForwardExplainer):
    """The Keras path (training's reference): one traced forward graph, any batch size."""

    runtime = "keras"

    def __init__(self, model):
        import keras
        import tensorflow as tf

        self.head = Head.of(model)
        outputs_model = keras.Model(
            model.input,
            [model.output, model.get_layer(config.LOGIT_LAYER).output,
             model.get_layer(config.CAM_LAYER).output],
        )
        spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS],
                             tf.float32)
        self._run = tf.function(lambda x: outputs_model(x, training=False), input_signature=[spec],
                                reduce_retracing=True)

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prob, logit, feats = (t.numpy() for t in self._run(np.asarray(images, "float32")))
        return prob.reshape(-1), logit.reshape(-1), feats


def library_cams(model, images: np.ndarray, method: str = METHODS[0]) -> np.ndarray:
    """The tf-keras-vis reference: a fresh Gradcam/GradcamPlusPlus, not upsampled (N, 7, 7).

    This is the naive per-call path (it clones the model); the benchmark and tests use it.
    The clone is made here rather than by tf-keras-vis: its ``clone=True`` copies weights with
    ``set_weights``, which leaves Keras 3's Normalization layer unfinalised (wrong input scale).
    """
    import keras
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
    if threshold <= 0 or flagged(probability, threshold):
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
