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

An ensemble (:mod:`pneumo.models.ensemble`) has K members' feature maps side by side and one
linear score per member: its maps are the plain mean of the members' own maps (each normalised
0..1), its member probabilities each member's own calibrated one, and its pooled features
(the OOD check's) the first member's.
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
    member_probabilities: np.ndarray | None = None  # (K,) an ensemble's members' own; None: one model


@dataclass(frozen=True)
class Head:
    """The linear part of the model after the last feature map: ``score = a * (w . pool(A) + c) + b``.

    ``probability = sigmoid(score)``; ``score`` is what tf-keras-vis differentiates. For an
    ensemble, ``w`` spans all members' channels (the mean logit's weights) and member m's own
    calibrated score is ``member_kernels[m] . pool(A_m) + member_biases[m]``.
    """

    kernel: np.ndarray  # (C,) logit weights w
    scale: float  # calibration a
    bias: float  # calibration b
    member_kernels: np.ndarray | None = None  # (K, C / K) an ensemble's members' a_m * w_m
    member_biases: np.ndarray | None = None  # (K,) their a_m * c_m + b_m

    @property
    def members(self) -> int:
        """K for an ensemble's head, 0 for a single model's."""
        return 0 if self.member_kernels is None else len(self.member_kernels)

    @classmethod
    def of(cls, model) -> Head:
        """Read the head's weights from the Keras classifier
        (:func:`pneumo.models.classifier.build_classifier`) or ensemble
        (:func:`pneumo.models.ensemble.build_ensemble`)."""
        logit, calibration = model.get_layer(config.LOGIT_LAYER), model.get_layer(config.CALIBRATION_LAYER)
        pool = model.get_layer("avg_pool")
        if (type(pool).__name__ != "GlobalAveragePooling2D"
                or pool.input is not model.get_layer(config.CAM_LAYER).output
                or logit.activation.__name__ != "linear"
                or calibration.activation.__name__ != "sigmoid"):
            raise ValueError("the closed-form CAMs need the head feature map -> global average "
                             "pool -> linear logit -> sigmoid calibration")
        a, b = calibration.get_weights()
        a, b = float(np.ravel(a)[0]), float(np.ravel(b)[0])
        if not any(layer.name == config.MEMBER_SCORES_LAYER for layer in model.layers):
            kernel = np.asarray(logit.get_weights()[0], "float32")
            return cls(kernel.reshape(-1), a, b)
        return cls._of_ensemble(model, logit, a, b)

    @classmethod
    def _of_ensemble(cls, model, logit, a: float, b: float) -> Head:
        scores = model.get_layer(config.MEMBER_SCORES_LAYER)
        if scores.activation.__name__ != "linear" or logit.input is not scores.output:
            raise ValueError("an ensemble's head must be member scores -> logit, both linear")
        block, member_biases = (np.asarray(w, "float32") for w in scores.get_weights())
        k = block.shape[1]
        channels = block.shape[0] // k
        member_kernels = np.stack([block[m * channels:(m + 1) * channels, m] for m in range(k)])
        off_diagonal = block.reshape(k, channels, k).copy()
        off_diagonal[np.arange(k), :, np.arange(k)] = 0.0
        if np.any(off_diagonal):
            raise ValueError("an ensemble's member scores must each read one member's channels")
        kernel = (block @ np.asarray(logit.get_weights()[0], "float32")).reshape(-1)
        return cls(kernel, a, b, member_kernels, member_biases.reshape(-1))

    def arrays(self) -> dict[str, np.ndarray]:
        """The head as named arrays (a runtime's head file); :meth:`from_arrays` reads them."""
        out = {"kernel": self.kernel, "scale": np.float64(self.scale), "bias": np.float64(self.bias)}
        if self.member_kernels is not None:
            out.update(member_kernels=self.member_kernels, member_biases=self.member_biases)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> Head:
        """The head :meth:`arrays` wrote (a mapping, e.g. an open ``.npz``)."""
        members = "member_kernels" in arrays
        return cls(np.asarray(arrays["kernel"], "float32"), float(arrays["scale"]),
                   float(arrays["bias"]),
                   np.asarray(arrays["member_kernels"], "float32") if members else None,
                   np.asarray(arrays["member_biases"], "float32") if members else None)

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
    if head.members:
        return _ensemble_explanations(probabilities, features, head)
    _, h, w, _ = features.shape
    gradient = head.gradient(h, w)
    cam = gradcam_from_features(features, gradient)
    cam_pp = gradcam_plus_plus_from_features(features, gradient, head.scores(logits))
    pooled = scope_features(features, head)
    return [Explanation(float(p), {METHODS[0]: c, METHODS[1]: cpp}, f)
            for p, c, cpp, f in zip(np.ravel(probabilities), cam, cam_pp, pooled)]


def scope_features(features: np.ndarray, head: Head) -> np.ndarray:
    """The pooled features the OOD and scope checks read, from a last feature map (N, h, w, C):
    the global average of all channels, for an ensemble only its first member's (N, C / K).
    The same rule as :func:`pneumo.models.ensemble.first_member_pooled` (a Keras tensor there);
    :func:`_ensemble_explanations` gets it as its first member's pooled features."""
    features = np.asarray(features)
    channels = features.shape[-1] // max(head.members, 1)
    return features[..., :channels].mean(axis=(1, 2))


def _ensemble_explanations(probabilities: np.ndarray, features: np.ndarray,
                           head: Head) -> list[Explanation]:
    """:func:`explanations` for an ensemble: per member, its Grad-CAM and Grad-CAM++ from its own
    channels and calibrated score, exactly as for that member alone; the maps are their plain
    mean, the features the first member's pooled ones."""
    n, h, w, channels = features.shape
    k = head.members
    per_member = features.reshape(n, h, w, k, channels // k)
    cams, cams_pp, scores, first = [], [], [], None
    for m in range(k):
        own = np.ascontiguousarray(per_member[..., m, :])
        pooled = own.mean(axis=(1, 2))
        first = pooled if first is None else first
        score = pooled @ head.member_kernels[m] + head.member_biases[m]
        gradient = head.member_kernels[m] / np.float32(h * w)
        cams.append(gradcam_from_features(own, gradient))
        cams_pp.append(gradcam_plus_plus_from_features(own, gradient, score))
        scores.append(score)
    cam, cam_pp = np.mean(cams, axis=0), np.mean(cams_pp, axis=0)
    member_p = 1.0 / (1.0 + np.exp(-np.stack(scores, axis=1).astype("float64")))
    return [Explanation(float(p), {METHODS[0]: c, METHODS[1]: cpp}, f, mp)
            for p, c, cpp, f, mp in zip(np.ravel(probabilities), cam, cam_pp, first, member_p)]


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
    For an ensemble it is the declared heat map, the plain mean of the members' maps: member
    m's is tf-keras-vis on its own calibrated score (``member_scores[:, m]``), whose gradient
    reaches only its own channels of the joint feature map.
    """
    import keras
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    from pneumo.models.ensemble import member_count

    cls = Gradcam if method == METHODS[0] else GradcamPlusPlus
    members = member_count(model)
    if members == 1:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        for layer in clone.layers:
            if isinstance(layer, keras.layers.Normalization):
                layer.finalize_state()
        cam = cls(clone, model_modifier=ReplaceToLinear(), clone=False)
    else:  # a fresh view ending at the members' linear scores: nothing to modify, so no clone
        # (a clone of the nested member models would leave their Normalization unfinalised)
        cam = cls(keras.Model(model.input, model.get_layer(config.MEMBER_SCORES_LAYER).output),
                  clone=False)
    images = np.asarray(images, dtype="float32")
    maps = [cam(lambda output, m=m: output[:, m], images, penultimate_layer=config.CAM_LAYER,
                seek_penultimate_conv_layer=False, expand_cam=False)
            for m in range(members)]
    return np.mean(np.asarray(maps), axis=0)


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
