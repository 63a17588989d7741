"""Invariance to encoding: does the answer change when the same radiograph is stored differently?

Each re-encoding takes one file's bytes and returns new file bytes, made the ways a user's file
may differ from the 224 px JPEG (quality 75) copies the model was trained on. The new bytes go
through the app's own decode path (:func:`pneumo.io.images.load_image`), so decoding, EXIF,
resizing and the model all take part, as in the app.

    png_2x      the same pixels up-sampled 2x (bicubic), lossless PNG
    jpeg_q95    re-saved as JPEG quality 95
    jpeg_q50    re-saved as JPEG quality 50
    crop_5pct   5 % of the width / height cut off each side, lossless PNG

:func:`compare` scores the originals and every re-encoding with a predictor and returns, per
re-encoding, the share of decisions that flip at the threshold and the size of the changes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from pneumo.evaluation.metrics import flagged
from pneumo.io.images import decode_image, load_image

CROP_FRACTION = 0.05  # of the width (height) cut from the left and right (top and bottom)


def _pixels(data: bytes) -> Image.Image:
    """The file's pixels as the app decodes them (RGB uint8, EXIF applied, full resolution)."""
    return Image.fromarray(decode_image(data).rgb)


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_2x(data: bytes) -> bytes:
    """The same pixels up-sampled 2x with bicubic interpolation, saved as lossless PNG."""
    img = _pixels(data)
    return _save(img.resize((2 * img.width, 2 * img.height), Image.Resampling.BICUBIC), "PNG")


def jpeg_q95(data: bytes) -> bytes:
    """Re-saved as JPEG, quality 95."""
    return _save(_pixels(data), "JPEG", quality=95)


def jpeg_q50(data: bytes) -> bytes:
    """Re-saved as JPEG, quality 50."""
    return _save(_pixels(data), "JPEG", quality=50)


def crop_box(width: int, height: int, fraction: float = CROP_FRACTION) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) that cuts ``fraction`` of each side off."""
    dx, dy = round(width * fraction), round(height * fraction)
    return dx, dy, width - dx, height - dy


def crop_5pct(data: bytes) -> bytes:
    """A 5 % border cut off each side, saved as lossless PNG."""
    img = _pixels(data)
    return _save(img.crop(crop_box(img.width, img.height)), "PNG")


TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "png_2x": png_2x,
    "jpeg_q95": jpeg_q95,
    "jpeg_q50": jpeg_q50,
    "crop_5pct": crop_5pct,
}


def probabilities(predictor, files: Sequence[bytes],
                  transform: Callable[[bytes], bytes] | None = None, chunk: int = 64) -> np.ndarray:
    """P(pneumonia) for each file (optionally re-encoded first), decoded by the app's path.

    ``predictor`` has ``predict((N, 224, 224, 3) uint8) -> (N,)`` like
    :class:`pneumo.models.classifier.Predictor`; files are decoded ``chunk`` at a time to keep memory flat.
    """
    out = []
    for start in range(0, len(files), chunk):
        batch = [transform(f) if transform else f for f in files[start:start + chunk]]
        out.append(np.asarray(predictor.predict(np.stack([load_image(f) for f in batch])),
                              dtype=np.float64).ravel())
    return np.concatenate(out) if out else np.zeros(0)


def summarize(base: np.ndarray, changed: np.ndarray, threshold: float) -> dict[str, float]:
    """Decision flips at ``threshold`` (:func:`pneumo.evaluation.metrics.flagged`) and |dp| figures,
    dp = changed - base."""
    base, changed = np.asarray(base, dtype=np.float64), np.asarray(changed, dtype=np.float64)
    if base.shape != changed.shape or base.size == 0:
        raise ValueError("summarize needs two probability arrays of the same, non-zero length")
    dp = changed - base
    flips = int(np.count_nonzero(flagged(base, threshold) != flagged(changed, threshold)))
    abs_dp = np.abs(dp)
    return {
        "n": int(base.size),
        "flips": flips,
        "flip_share": flips / base.size,
        "abs_dp_p50": float(np.percentile(abs_dp, 50)),
        "abs_dp_p95": float(np.percentile(abs_dp, 95)),
        "abs_dp_max": float(abs_dp.max()),
        "mean_dp": float(dp.mean()),
    }


def compare(predictor, files: Sequence[bytes], threshold: float,
            transforms: Mapping[str, Callable[[bytes], bytes]] | None = None) -> dict[str, dict[str, float]]:
    """Per re-encoding, :func:`summarize` of its probabilities against the original files'."""
    transforms = TRANSFORMS if transforms is None else transforms
    base = probabilities(predictor, files)
    return {name: summarize(base, probabilities(predictor, files, fn), threshold)
            for name, fn in transforms.items()}
