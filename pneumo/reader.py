"""Reading a batch of uploaded files: decode each once, then one batched model pass for all.

Shared by the app and the batch CLI. A bad file becomes a Reading with an ``error`` message;
the rest of the batch goes on. Nothing here writes to disk or logs header or pixel content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from pneumo import config
from pneumo.images import ImageError, decode_image, to_model_input

DISPLAY_MAX_SIDE = 768  # pixels: the copy kept for display and overlays

ProgressCallback = Callable[[float, str], None]


@dataclass
class Reading:
    """What pneumo says about one file."""

    name: str
    digest: str
    display: np.ndarray | None = None  # RGB uint8, at most DISPLAY_MAX_SIDE
    model_input: np.ndarray | None = None  # 224x224x3 uint8
    probability: float | None = None
    cams: dict[str, np.ndarray] = field(default_factory=dict)  # method -> 7x7 map, 0..1
    features: np.ndarray | None = None  # pooled model features, for the OOD check
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    ood_warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.probability is not None


def decide(probability: float, threshold: float) -> str:
    """PNEUMONIA when the probability reaches the threshold, else NORMAL."""
    return config.CLASS_NAMES[1] if probability >= threshold else config.CLASS_NAMES[0]


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def display_copy(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Shrink for display keeping the aspect ratio (no-op for small images)."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def decode_file(name: str, data: bytes) -> Reading:
    """Decode one file; errors become the Reading's message, never an exception."""
    reading = Reading(name=name, digest=digest_of(data))
    try:
        decoded = decode_image(data)
        reading.display = display_copy(decoded.rgb)
        reading.model_input = to_model_input(decoded.rgb)
        reading.notes = list(decoded.notes)
    except ImageError as err:
        reading.error = str(err)
    except MemoryError:
        reading.error = "The image is too large to open on this machine. Export a smaller copy."
    except Exception:  # a decoder bug must not take the batch down
        reading.error = ("pneumo could not read this file. Export it again as PNG or JPEG and "
                         "re-upload it.")
    return reading


def read_batch(
    files: Iterable[tuple[str, bytes]],
    explainer,
    ood_check: Callable[[Reading], str | None] | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 16,
) -> list[Reading]:
    """Decode every file, then run probability + CAMs for all readable ones in batches."""
    files = list(files)
    readings: list[Reading] = []
    for i, (name, data) in enumerate(files):
        if progress:
            progress(0.3 * i / max(len(files), 1), f"Decoding {name}")
        readings.append(decode_file(name, data))
    good = [r for r in readings if r.error is None]
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        if progress:
            progress(0.3 + 0.7 * start / max(len(good), 1),
                     f"Reading images {start + 1}-{start + len(chunk)} of {len(good)}")
        explanations = explainer.explain(np.stack([r.model_input for r in chunk]))
        for reading, explanation in zip(chunk, explanations):
            reading.probability = explanation.probability
            reading.cams = explanation.cams
            reading.features = explanation.features
    if ood_check is not None:
        for reading in good:
            reading.ood_warning = ood_check(reading)
    if progress:
        progress(1.0, f"Read {len(good)} of {len(readings)} files")
    return readings


def worklist_rows(readings: list[Reading], threshold: float) -> list[dict]:
    """Table rows, highest probability first; unreadable files last."""
    rows = []
    for r in readings:
        rows.append({
            "file": r.name,
            "probability_pneumonia": None if r.probability is None else round(r.probability, 4),
            "decision": decide(r.probability, threshold) if r.ok else "NOT READ",
            "threshold": round(threshold, 3),
            "warning": r.error or r.ood_warning or "; ".join(r.notes),
        })
    return sorted(rows, key=lambda row: -1 if row["probability_pneumonia"] is None
                  else row["probability_pneumonia"], reverse=True)
