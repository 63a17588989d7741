"""Image quality checks on real radiographs: turned or flipped, inverted grey scale, low resolution.

The "not a chest X-ray" check (:mod:`pneumo.models.ood`) is for pictures that are not radiographs. This
module is for the mistakes made with real ones:

- **orientation**: turned 90 deg either way, 180 deg, or flipped top to bottom;
- **inverted grey scale** (bones dark, lungs light; also a MONOCHROME1 DICOM with a wrong tag);
- **low resolution**: the original's shorter side below ``config.QUALITY_MIN_SIDE``. Needs no
  model; such images also fail the OOD texture test for being small, so the reader should show
  this note instead of that message (:func:`suppress_ood_texture`).

Orientation and inversion come from a small CNN (``weights/quality.keras``, trained by
``python -m pneumo.train_quality`` on transformed copies of the training split) with two heads:
a 5-way softmax over orientations and a sigmoid for inversion. A finding needs the head's
probability to reach the threshold chosen on validation (``weights/quality.json``). Each
finding comes with the corrected model input (:func:`correct`), so the app can offer a reading
of the image turned the right way. :meth:`QualityChecker.load` runs the network through
OpenVINO when it can (converted once from the ``.keras`` file and cached,
:func:`pneumo.models.runtime.load_network`), else through Keras, the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pneumo import config
from pneumo.evaluation import artifacts

log = logging.getLogger(__name__)

# Orientation classes, in the order of the network's softmax. Each names how the image as
# shown was made from the upright one: "rot90" = np.rot90(upright, 1), turned 90 deg
# anticlockwise (the head end on the left); "upside_down" = np.flipud(upright).
UPRIGHT = "upright"
ROT90 = "rot90"
ROT180 = "rot180"
ROT270 = "rot270"
UPSIDE_DOWN = "upside_down"
ORIENTATIONS = (UPRIGHT, ROT90, ROT180, ROT270, UPSIDE_DOWN)
INVERTED = "inverted"
LOW_RESOLUTION = "low_resolution"
CORRECTABLE = (ROT90, ROT180, ROT270, UPSIDE_DOWN, INVERTED)

_READ_CORRECTED = "pneumo can read the corrected copy; or fix the export and re-upload it."
MESSAGES = {
    ROT90: ("The X-ray looks turned 90 degrees anticlockwise (head end on the left). "
            "The reading of the image as uploaded is unreliable. " + _READ_CORRECTED),
    ROT270: ("The X-ray looks turned 90 degrees clockwise (head end on the right). "
             "The reading of the image as uploaded is unreliable. " + _READ_CORRECTED),
    ROT180: ("The X-ray looks turned 180 degrees (upside down). "
             "The reading of the image as uploaded is unreliable. " + _READ_CORRECTED),
    UPSIDE_DOWN: ("The X-ray looks flipped top to bottom (upside down, mirror image). "
                  "The reading of the image as uploaded is unreliable. " + _READ_CORRECTED),
    INVERTED: ("The grey scale looks inverted (bones dark, lungs light), e.g. a negative or a "
               "MONOCHROME1 DICOM with a wrong photometric tag. The reading of the image as "
               "uploaded is unreliable. " + _READ_CORRECTED),
}
MODEL_MISSING = ("The orientation and grey-scale checks are off: {path} is missing "
                 "(python -m pneumo.train_quality writes it). Only low resolution is checked.")
MODEL_UNUSABLE = ("The orientation and grey-scale checks are off: {path} could not be used "
                  "({error}). Only low resolution is checked.")


def low_resolution_message(height: int, width: int) -> str:
    """The note for a small original, saying what to do."""
    return (f"Low resolution: the original is only {width}x{height} pixels (pneumo was trained "
            f"on radiographs at least {config.QUALITY_MIN_SIDE} pixels on the shorter side), so "
            "the reading is less reliable. Upload the full-size radiograph if you have it.")


def is_low_resolution(original_size: tuple[int, int]) -> bool:
    """True when the shorter side of the original decoded image is below the limit."""
    return min(int(original_size[0]), int(original_size[1])) < config.QUALITY_MIN_SIDE


def correct(image: np.ndarray, code: str) -> np.ndarray:
    """Undo the transform named by ``code`` (one of :data:`CORRECTABLE`); a new array.

    Works on (H, W) or (H, W, C) arrays; ``inverted`` expects uint8.
    """
    image = np.asarray(image)
    if code == ROT90:
        out = np.rot90(image, -1)
    elif code == ROT180:
        out = np.rot90(image, 2)
    elif code == ROT270:
        out = np.rot90(image, 1)
    elif code == UPSIDE_DOWN:
        out = np.flipud(image)
    elif code == INVERTED:
        out = 255 - image
    else:
        raise ValueError(f"nothing to undo for {code!r}; expected one of {CORRECTABLE}")
    return np.ascontiguousarray(out)


def apply(image: np.ndarray, code: str) -> np.ndarray:
    """Make the transform named by ``code`` (the inverse of :func:`correct`); a new array."""
    image = np.asarray(image)
    if code == UPRIGHT:
        return image.copy()
    if code in (ROT90, ROT270):
        return correct(image, ROT270 if code == ROT90 else ROT90)
    return correct(image, code)  # 180 deg, the vertical flip and inversion are their own inverse


def prepare(images: np.ndarray, size: int = config.QUALITY_INPUT_SIZE) -> np.ndarray:
    """(N, H, W, 3) or (N, H, W) uint8 -> the network's input (N, size, size, 1) float32 0..1."""
    images = np.asarray(images)
    out = np.empty((len(images), size, size, 1), dtype="float32")
    for i, image in enumerate(images):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        out[i, ..., 0] = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return out / 255.0


def build_network(size: int = config.QUALITY_INPUT_SIZE):
    """A small CNN: four conv blocks, then an orientation softmax and an inversion sigmoid."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="grey")
    x = inputs
    for filters in (16, 32, 64, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)  # keeps where things are: the point of an orientation check
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(64, activation="relu")(x)
    orientation = layers.Dense(len(ORIENTATIONS), activation="softmax", name="orientation")(x)
    inverted = layers.Dense(1, activation="sigmoid", name="inverted")(x)
    return keras.Model(inputs, {"orientation": orientation, "inverted": inverted},
                       name="quality")


@dataclass
class QualityReport:
    """What the quality check says about one image.

    ``findings``: (code, message) pairs, most useful first; ``corrected``: the 224x224x3 model
    input with every found orientation/inversion undone, or None when none was found;
    ``low_resolution``: the original was small (a very small one also skips the OOD texture
    test: :func:`suppress_ood_texture`); ``probabilities``: the network's outputs (empty
    without a model); ``original_size``: (height, width) of the original, when known.
    """

    findings: list[tuple[str, str]] = field(default_factory=list)
    corrected: np.ndarray | None = None
    low_resolution: bool = False
    probabilities: dict[str, float] = field(default_factory=dict)
    original_size: tuple[int, int] | None = None

    @property
    def codes(self) -> list[str]:
        return [code for code, _ in self.findings]

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.findings]

    @property
    def correctable(self) -> bool:
        """True when a corrected copy is offered (turned, flipped or inverted)."""
        return self.corrected is not None


def suppress_ood_texture(report: QualityReport | None) -> bool:
    """True when the OOD texture test should not speak for this image: it is only small.

    A small original upscaled to 224 px is smooth, which is exactly what the Laplacian texture
    test flags; the low-resolution note says the right thing instead. Only below
    ``config.QUALITY_OOD_TEXTURE_SIDE`` (shorter side), where the test misfires on radiographs:
    above it, it still catches small pictures that are not radiographs. The colour and feature
    tests always apply.
    """
    if report is None or not report.low_resolution:
        return False
    size = report.original_size
    return size is None or min(int(size[0]), int(size[1])) < config.QUALITY_OOD_TEXTURE_SIDE


def decide(orientation_probs: np.ndarray, inverted_prob: float,
           thresholds: dict[str, float]) -> list[str]:
    """Codes found from one image's network outputs (pure): the most likely orientation if it is
    not upright and reaches ``thresholds['orientation']``; inversion at ``thresholds['inverted']``."""
    codes = []
    k = int(np.argmax(orientation_probs))
    if k != 0 and float(orientation_probs[k]) >= thresholds["orientation"]:
        codes.append(ORIENTATIONS[k])
    if float(inverted_prob) >= thresholds["inverted"]:
        codes.append(INVERTED)
    return codes


def report_for(codes: Sequence[str], model_input: np.ndarray,
               original_size: tuple[int, int] | None,
               probabilities: dict[str, float] | None = None) -> QualityReport:
    """A report from found codes (pure): messages, corrected input, low-resolution note."""
    report = QualityReport(probabilities=dict(probabilities or {}),
                           original_size=None if original_size is None else (
                               int(original_size[0]), int(original_size[1])))
    corrected = model_input
    for code in codes:
        report.findings.append((code, MESSAGES[code]))
        corrected = correct(corrected, code)
    if codes:
        report.corrected = corrected
    if original_size is not None and is_low_resolution(original_size):
        report.low_resolution = True
        report.findings.append((LOW_RESOLUTION, low_resolution_message(*original_size)))
    return report


class QualityChecker:
    """The quality check; works without its network (then only low resolution is checked)."""

    def __init__(self, model=None, thresholds: dict[str, float] | None = None,
                 notice: str | None = None, network=None):
        self.model = model  # the Keras network (the reference), or None
        self.network = network  # or its OpenVINO conversion (runtime.OpenVinoNetwork)
        self.thresholds = {"orientation": config.QUALITY_MIN_THRESHOLD,
                           "inverted": config.QUALITY_MIN_THRESHOLD, **(thresholds or {})}
        self.notice = notice  # why a check is off, to show once (None: all checks on)
        self._run = None

    @property
    def available(self) -> bool:
        """True when the orientation and grey-scale checks run."""
        return self.model is not None or self.network is not None

    @property
    def runtime(self) -> str | None:
        return "openvino" if self.network is not None else "keras" if self.model is not None else None

    @classmethod
    def load(cls, weights_dir: Path | None = None, runtime: str | None = None,
             cache_dir: str | Path | None = None) -> QualityChecker:
        """The network and thresholds from the weights folder; a checker without them if absent.

        The network runs through OpenVINO unless ``runtime`` (default ``config.RUNTIME``) is
        "keras" or OpenVINO cannot be used (then Keras, with a log line).
        """
        folder = Path(weights_dir) if weights_dir is not None else config.WEIGHTS_DIR
        model_path = folder / config.QUALITY_MODEL_FILE
        if not model_path.exists():
            notice = MODEL_MISSING.format(path=model_path)
            log.warning(notice)
            return cls(notice=notice)
        record = artifacts.read_record(config.QUALITY_RECORD_FILE, folder)
        thresholds = None if record is None else record.get("thresholds")
        if (runtime or config.RUNTIME) != "keras":
            from pneumo.models import runtime as runtimes

            try:
                return cls(thresholds=thresholds, network=runtimes.load_network(
                    model_path, runtimes.QUALITY, load_keras_model, cache_dir))
            except Exception as err:
                log.warning("image-quality network runs on Keras (OpenVINO not used: %s)", err)
        return cls(load_keras_model(model_path), thresholds)

    def predict(self, model_inputs: np.ndarray, batch_size: int = 64
                ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 224, 224, 3) uint8 -> orientation probabilities (N, 5), inversion (N,)."""
        if not self.available:
            raise RuntimeError(self.notice or "no quality network loaded")
        if self._run is None and self.network is not None:  # outputs: orientation, inverted
            self._run = lambda x: dict(zip(("orientation", "inverted"), self.network(x)))
        if self._run is None:
            import tensorflow as tf

            size = config.QUALITY_INPUT_SIZE
            spec = tf.TensorSpec([None, size, size, 1], tf.float32)
            self._run = tf.function(lambda x: self.model(x, training=False),
                                    input_signature=[spec], reduce_retracing=True)
        orientation, inverted = [], []
        for start in range(0, len(model_inputs), batch_size):
            out = self._run(prepare(model_inputs[start:start + batch_size]))
            orientation.append(np.asarray(out["orientation"]))
            inverted.append(np.asarray(out["inverted"])[:, 0])
        if not orientation:
            return np.zeros((0, len(ORIENTATIONS)), "float32"), np.zeros(0, "float32")
        return np.concatenate(orientation), np.concatenate(inverted)

    def check(self, model_inputs: np.ndarray,
              original_sizes: Sequence[tuple[int, int] | None]) -> list[QualityReport]:
        """One report per image: ``model_inputs`` (N, 224, 224, 3) uint8, ``original_sizes``
        the (height, width) of each decoded original (None: unknown, no resolution check)."""
        model_inputs = np.asarray(model_inputs)
        if model_inputs.ndim == 3:
            model_inputs = model_inputs[None]
        if len(original_sizes) != len(model_inputs):
            raise ValueError(f"{len(model_inputs)} images but {len(original_sizes)} sizes")
        if not self.available:
            return [report_for([], image, size) for image, size in zip(model_inputs, original_sizes)]
        orientation, inverted = self.predict(model_inputs)
        reports = []
        for image, size, o, v in zip(model_inputs, original_sizes, orientation, inverted):
            probs = {name: float(p) for name, p in zip(ORIENTATIONS, o)}
            probs[INVERTED] = float(v)
            reports.append(report_for(decide(o, v, self.thresholds), image, size, probs))
        return reports


def load_keras_model(path: Path):
    """The Keras quality network (the reference)."""
    import keras

    return keras.models.load_model(path, compile=False)


# What pneumo did to undo each finding, for the note on a corrected reading.
CORRECTION_WORDS = {
    ROT90: "turned 90 degrees clockwise",
    ROT270: "turned 90 degrees anticlockwise",
    ROT180: "turned 180 degrees",
    UPSIDE_DOWN: "flipped top to bottom",
    INVERTED: "grey scale inverted back",
}


def correction_note(codes: Sequence[str]) -> str:
    """The note on a reading of the corrected copy: what pneumo changed, and that it did."""
    done = [CORRECTION_WORDS[c] for c in codes if c in CORRECTION_WORDS]
    if not done:
        return ""
    return ("Corrected by pneumo, not the image as uploaded: " + " and ".join(done) +
            " before reading.")  # also a CSV note: no "the image below" here (#21)


CHECK_CORRECTED = "Check the image below is the right way round."  # the card's words under it


def correction_label(codes: Sequence[str]) -> str:
    """The label of the button offering the corrected reading."""
    if any(c in (ROT90, ROT180, ROT270, UPSIDE_DOWN) for c in codes):
        return "Read it turned the right way"
    return "Read the inverted image"
