"""The classifier: EfficientNet-Lite0 (public Keras layers, Lite settings) with a calibrated head.

The network takes RGB pixels 0-255 (see :mod:`pneumo.io.images`) and outputs the calibrated
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

from pneumo import config

# Lite preprocessing, (x - 127) / 128, as the builder's Rescaling(1/255) + Normalization hold it.
_LITE_MEAN = 127.0 / 255.0
_LITE_STD = 128.0 / 255.0

# EfficientNet-B0's block table (Tan & Le 2019; the table in Keras' EfficientNet) without
# squeeze-and-excitation, which is the Lite form. Width and depth coefficients are 1.0 for
# Lite0, so the filters and repeats are used as written.
_LITE0_BLOCKS = (
    # kernel_size, repeats, filters_in, filters_out, expand_ratio, strides
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_STEM_FILTERS = 32
_TOP_FILTERS = 1280
_DROP_CONNECT_RATE = 0.2  # Keras' default: residual dropout grows linearly to 0.2 over the blocks
_CONV_INIT = {"class_name": "VarianceScaling",
              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


def lite0_blocks_args() -> list[dict]:
    """EfficientNet-B0's block table with squeeze-and-excitation removed (the Lite form)."""
    keys = ("kernel_size", "repeats", "filters_in", "filters_out", "expand_ratio", "strides")
    return [{**dict(zip(keys, row, strict=True)), "id_skip": True, "se_ratio": 0.0}
            for row in _LITE0_BLOCKS]


def _correct_pad(x, kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Zero padding before a stride-2 'valid' convolution, as Keras' applications pad (TF 'same')."""
    height, width = x.shape[1], x.shape[2]
    half = kernel_size // 2
    return ((half - (1 - height % 2), half), (half - (1 - width % 2), half))


def _block(x, drop_rate: float, name: str, *, kernel_size: int, filters_in: int,
           filters_out: int, expand_ratio: int, strides: int, id_skip: bool, **_):
    """One inverted-residual (MBConv) block without squeeze-and-excitation, relu6."""
    layers = keras.layers
    inputs = x
    if expand_ratio != 1:
        x = layers.Conv2D(filters_in * expand_ratio, 1, padding="same", use_bias=False,
                          kernel_initializer=_CONV_INIT, name=f"{name}expand_conv")(x)
        x = layers.BatchNormalization(axis=3, name=f"{name}expand_bn")(x)
        x = layers.Activation("relu6", name=f"{name}expand_activation")(x)
    if strides == 2:
        x = layers.ZeroPadding2D(padding=_correct_pad(x, kernel_size), name=f"{name}dwconv_pad")(x)
    x = layers.DepthwiseConv2D(kernel_size, strides=strides,
                               padding="valid" if strides == 2 else "same", use_bias=False,
                               depthwise_initializer=_CONV_INIT, name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(axis=3, name=f"{name}bn")(x)
    x = layers.Activation("relu6", name=f"{name}activation")(x)
    x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                      kernel_initializer=_CONV_INIT, name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(axis=3, name=f"{name}project_bn")(x)
    if id_skip and strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.add([x, inputs], name=f"{name}add")
    return x


def build_lite0(include_top: bool = False, weights: str | Path | None = None) -> keras.Model:
    """EfficientNet-Lite0 on public Keras layers: no SE, relu6, RGB 0-255 input.

    Layer for layer (names, order, settings) what Keras' EfficientNet builder makes with
    ``activation="relu6"``, SE ratio 0 and no ImageNet std rescaling, so weights saved from
    either load into the other (checked against the builder in ``keras.src`` when this was
    written: identical configs and outputs). ``weights`` is a local ``.weights.h5`` file (never
    a download). With ``include_top`` the 1000-class ImageNet head is added.
    """
    layers = keras.layers
    size = config.IMAGE_SIZE
    img_input = layers.Input(shape=(size, size, config.CHANNELS))
    x = layers.Rescaling(1.0 / 255.0)(img_input)
    x = layers.Normalization(axis=3)(x)
    x = layers.ZeroPadding2D(padding=_correct_pad(x, 3), name="stem_conv_pad")(x)
    x = layers.Conv2D(_STEM_FILTERS, 3, strides=2, padding="valid", use_bias=False,
                      kernel_initializer=_CONV_INIT, name="stem_conv")(x)
    x = layers.BatchNormalization(axis=3, name="stem_bn")(x)
    x = layers.Activation("relu6", name="stem_activation")(x)

    blocks_args = lite0_blocks_args()
    total = float(sum(args["repeats"] for args in blocks_args))
    b = 0
    for i, args in enumerate(blocks_args):
        args = copy.deepcopy(args)
        for j in range(args.pop("repeats")):
            if j > 0:
                args["strides"] = 1
                args["filters_in"] = args["filters_out"]
            x = _block(x, _DROP_CONNECT_RATE * b / total, f"block{i + 1}{chr(j + 97)}_", **args)
            b += 1

    x = layers.Conv2D(_TOP_FILTERS, 1, padding="same", use_bias=False,
                      kernel_initializer=_CONV_INIT, name="top_conv")(x)
    x = layers.BatchNormalization(axis=3, name="top_bn")(x)
    x = layers.Activation("relu6", name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions",
                         kernel_initializer={"class_name": "VarianceScaling", "config": {
                             "scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}})(x)
    model = keras.Model(img_input, x, name=config.BACKBONE_NAME)
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


def model_problem(path: str | Path) -> str | None:
    """Why there is no model to load at ``path``, or None when the file is there."""
    if Path(path).is_file():
        return None
    return f"No model at {path}. Train one with `python -m pneumo.train --data PATH`."


def load_model(path: str | Path | None = None) -> keras.Model:
    """Load the bundled (or given) ``.keras`` model for inference."""
    path = Path(path) if path is not None else config.weights_path(config.MODEL_FILE)
    if problem := model_problem(path):
        raise FileNotFoundError(problem)
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
