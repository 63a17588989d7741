"""Issue #25's deep ensemble as ONE Keras model behind the classifier's interfaces.

:func:`build_ensemble` joins K trained classifiers (:func:`pneumo.models.classifier.build_classifier`)::

    image -> member_1 ... member_K (each member's backbone up to its last feature map)
          -> concatenate (named config.CAM_LAYER: N x 7 x 7 x K*1280)
          -> global average pool (avg_pool) -> dropout (head_dropout)
          -> member_scores: Dense(K), block-diagonal: block m = a_m * w_m, bias a_m * c_m + b_m,
             so sigmoid(member_scores) are the members' own calibrated probabilities
          -> logit: Dense(1), kernel 1 / (K a_m), bias -(1/K) sum_m b_m / a_m: exactly the mean
             of the members' uncalibrated logits w_m . pool_m + c_m
          -> calibration: the one Platt layer, fitted on validation as for a single model

(``w_m, c_m``: member m's logit layer; ``a_m, b_m``: its Platt calibration.) Everything after
the feature map is linear, so the closed-form Grad-CAM of :mod:`pneumo.models.explain` still
holds, per member (:class:`pneumo.models.explain.Head` reads the blocks back). The model is made
of public Keras layers only, so :func:`pneumo.models.classifier.load_model` loads it.
"""

from __future__ import annotations

import keras
import numpy as np

from pneumo import config
from pneumo.models.classifier import get_calibration


def is_ensemble(model: keras.Model) -> bool:
    """True for a model made by :func:`build_ensemble` (it has the member-scores layer)."""
    return any(layer.name == config.MEMBER_SCORES_LAYER for layer in model.layers)


def member_count(model: keras.Model) -> int:
    """K for an ensemble, 1 for a single classifier."""
    if not is_ensemble(model):
        return 1
    return int(model.get_layer(config.MEMBER_SCORES_LAYER).units)


def build_ensemble(member_models: list[keras.Model],
                   dropout_rate: float = config.DROPOUT_RATE) -> keras.Model:
    """One functional model of the members: the mean of their uncalibrated logits, then the
    ensemble's Platt calibration (identity until ``fit_calibration`` sets it); see the module.

    Each member is a single calibrated classifier with a nonzero Platt scale.
    """
    if len(member_models) < 2:
        raise ValueError("an ensemble needs at least two members")
    size = config.IMAGE_SIZE
    inputs = keras.Input(shape=(size, size, config.CHANNELS), name="image")
    maps, kernels, biases, scales, platt_biases = [], [], [], [], []
    for m, member in enumerate(member_models, start=1):
        if is_ensemble(member):
            raise ValueError(f"member {m} is itself an ensemble")
        backbone = keras.Model(member.input, member.get_layer(config.CAM_LAYER).output,
                               name=f"{config.MEMBER_PREFIX}{m}")
        maps.append(backbone(inputs))
        w, c = member.get_layer(config.LOGIT_LAYER).get_weights()
        a, b = get_calibration(member)
        if a == 0:
            raise ValueError(f"member {m} has a zero calibration scale")
        kernels.append(np.asarray(w, "float32").reshape(-1) * np.float32(a))
        biases.append(np.float32(a) * np.float32(np.ravel(c)[0]) + np.float32(b))
        scales.append(a)
        platt_biases.append(b)
    k, channels = len(member_models), len(kernels[0])
    x = keras.layers.Concatenate(name=config.CAM_LAYER)(maps)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
    scores_layer = keras.layers.Dense(k, name=config.MEMBER_SCORES_LAYER, trainable=False)
    scores = scores_layer(x)
    logit_layer = keras.layers.Dense(1, name=config.LOGIT_LAYER, trainable=False)
    logit = logit_layer(scores)
    prob = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones",
                              bias_initializer="zeros", trainable=False,
                              name=config.CALIBRATION_LAYER)(logit)
    model = keras.Model(inputs, prob, name="pneumo_ensemble")

    block = np.zeros((k * channels, k), "float32")
    for m, kernel in enumerate(kernels):
        block[m * channels:(m + 1) * channels, m] = kernel
    scores_layer.set_weights([block, np.asarray(biases, "float32")])
    a, b = np.asarray(scales, "float64"), np.asarray(platt_biases, "float64")
    logit_layer.set_weights([(1.0 / (k * a)).astype("float32")[:, None],
                             np.array([-(b / a).sum() / k], "float32")])
    return model


def first_member_pooled(model: keras.Model):
    """The pooled features the OOD and scope checks read (a Keras tensor of ``model``): the
    ``avg_pool`` output, for an ensemble only its first member's channels."""
    pooled = model.get_layer("avg_pool").output
    k = member_count(model)
    return pooled if k == 1 else pooled[:, :pooled.shape[-1] // k]
