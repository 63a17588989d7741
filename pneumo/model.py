"""The classifier: EfficientNet-Lite0 (Keras' own builder, Lite settings) with a calibrated head.

The network takes RGB pixels 0-255 (see :mod:`pneumo.images`) and outputs the calibrated
probability of pneumonia. Its last layer, ``calibration``, is a one-weight Dense with a sigmoid:
``p = sigmoid(a * logit + b)`` (Platt scaling). It is the identity calibration (a=1, b=0)
during training and is fitted on validation afterwards, so the saved model only ever emits
calibrated probabilities.
"""

from __future__ import annotations

import copy
from pathlib import Path

import keras
import numpy as np
from keras.src.applications.efficientnet import DEFAULT_BLOCKS_ARGS, EfficientNet

from pneumo import config

# Lite preprocessing, (x - 127) / 128, as the builder's Rescaling(1/255) + Normalization hold it.
_LITE_MEAN = 127.0 / 255.0
_LITE_STD = 128.0 / 255.0


def lite0_blocks_args() -> list[dict]:
    """EfficientNet-B0's block table with squeeze-and-excitation removed (the Lite form)."""
    blocks = copy.deepcopy(DEFAULT_BLOCKS_ARGS)
    for block in blocks:
        block["se_ratio"] = 0.0
    return blocks


def build_lite0(include_top: bool = False, weights: str | Path | None = None) -> keras.Model:
    """EfficientNet-Lite0 from Keras' EfficientNet builder: no SE, relu6, RGB 0-255 input.

    ``weights`` is a local ``.weights.h5`` file (never a download).
    """
    model = EfficientNet(
        1.0,
        1.0,
        config.IMAGE_SIZE,
        activation="relu6",
        blocks_args=lite0_blocks_args(),
        name=config.BACKBONE_NAME,
        include_top=include_top,
        weights=None,
        input_shape=(config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS),
    )
    _set_lite_normalization(model)
    if weights is not None:
        model.load_weights(str(weights))
    return model


def _set_lite_normalization(model: keras.Model) -> None:
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    mean = np.full((config.CHANNELS,), _LITE_MEAN, dtype="float32")
    var = np.full((config.CHANNELS,), _LITE_STD**2, dtype="float32")
    norm.set_weights([mean, var, np.array(0, dtype="int64")][: len(norm.weights)])
    norm.finalize_state()


def build_classifier(
    backbone_weights: str | Path | None = None, dropout_rate: float = config.DROPOUT_RATE
) -> keras.Model:
    """Lite0 backbone -> global average pool -> dropout -> logit -> Platt calibration.

    The model is flat (backbone layers are its own layers), so Grad-CAM can reach
    ``config.CAM_LAYER`` directly.
    """
    backbone = build_lite0(include_top=False, weights=backbone_weights)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
    logit = keras.layers.Dense(1, name=config.LOGIT_LAYER)(x)
    prob = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer="ones",
        bias_initializer="zeros",
        trainable=False,
        name=config.CALIBRATION_LAYER,
    )(logit)
    return keras.Model(backbone.input, prob, name="pneumo")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The classifier's layers that come from the Lite0 backbone (everything before the head)."""
    head = {"avg_pool", "head_dropout", config.LOGIT_LAYER, config.CALIBRATION_LAYER}
    return [layer for layer in model.layers if layer.name not in head]


def set_calibration(model: keras.Model, scale: float, bias: float) -> None:
    """Store Platt parameters ``p = sigmoid(scale * logit + bias)`` in the model."""
    layer = model.get_layer(config.CALIBRATION_LAYER)
    layer.set_weights([np.array([[scale]], dtype="float32"), np.array([bias], dtype="float32")])


def get_calibration(model: keras.Model) -> tuple[float, float]:
    """The Platt parameters (scale, bias) stored in the model."""
    kernel, bias = model.get_layer(config.CALIBRATION_LAYER).get_weights()
    return float(kernel.ravel()[0]), float(bias.ravel()[0])


def logit_model(model: keras.Model) -> keras.Model:
    """A view of ``model`` that outputs the uncalibrated logit (shares weights)."""
    return keras.Model(model.input, model.get_layer(config.LOGIT_LAYER).output)


def load_model(path: str | Path | None = None) -> keras.Model:
    """Load the bundled (or given) ``.keras`` model for inference."""
    path = Path(path) if path is not None else config.weights_path(config.MODEL_FILE)
    if not path.exists():
        raise FileNotFoundError(
            f"No model at {path}. Train one with `python -m pneumo.train --data PATH`."
        )
    return keras.saving.load_model(path, compile=False)


class Predictor:
    """Calibrated probabilities from one loaded model through one traced graph.

    The graph has a fixed input signature (any batch of 224x224x3 float32), so it is traced
    once per process whatever the batch size.
    """

    def __init__(self, model: keras.Model):
        import tensorflow as tf

        self.model = model
        spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS],
                             tf.float32)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                    reduce_retracing=True)

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, 224, 224, 3) uint8 or float RGB 0-255 -> (N,) calibrated P(pneumonia)."""
        images = np.asarray(images, dtype="float32")
        if images.ndim == 3:
            images = images[None]
        out = [self._predict(images[i:i + batch_size]).numpy().ravel()
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), dtype="float32")
