"""Streamlit helpers: cached resources and tables, the shared threshold, small HTML widgets.

The only module in ``pneumo`` that imports Streamlit.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from dataclasses import dataclass

import numpy as np
import streamlit as st

from pneumo import config, wording
from pneumo.reader import Reading, decide

THRESHOLD_KEY = "threshold"
_SLIDER_KEY = "threshold_slider"
DECISION_COLOURS = {"PNEUMONIA": "#c0392b", "NORMAL": "#2e7d5b"}


@st.cache_resource(show_spinner="Loading the model (once per server)...")
def explainer():
    """The one model + CAM graph of this server process, traced and warmed up."""
    from pneumo.explain import CamExplainer
    from pneumo.model import load_model

    cam = CamExplainer(load_model())
    cam.explain(np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE, 3), dtype="uint8"))
    return cam


def segmenter():
    """The lung-field segmenter, or None when ``weights/lungs.keras`` is absent or unusable.

    Cached per file version, so a model that appears or is replaced while the server runs is
    picked up on the next reading.
    """
    path = config.weights_path(config.LUNG_MODEL_FILE)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _segmenter(str(path), stamp)


@st.cache_resource(show_spinner="Loading the lung-field model (once per server)...")
def _segmenter(path: str, stamp: int):
    from pneumo.lungs import LungSegmenter

    try:
        seg = LungSegmenter.load(path)
        seg.fields(np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE, 3), dtype="uint8"))
    except Exception as err:  # a broken file hides the feature; the reading goes on without it
        logging.getLogger(__name__).warning("lung-field model not used: %s", err)
        return None
    return seg


def quality_checker():
    """The image-quality check (turned, flipped, inverted, low resolution); never None.

    Without ``weights/quality.keras``, or when it cannot be used, the checker checks only the
    resolution and says why in ``notice``. Cached per file version, like :func:`segmenter`.
    """
    path = config.weights_path(config.QUALITY_MODEL_FILE)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    return _quality_checker(str(path), stamp)


@st.cache_resource(show_spinner="Loading the image-quality check (once per server)...")
def _quality_checker(path: str, stamp: int | None):
    from pathlib import Path

    from pneumo.quality import MODEL_UNUSABLE, QualityChecker

    try:
        checker = QualityChecker.load(Path(path).parent)
        if checker.available:
            checker.check(np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE, 3), dtype="uint8"),
                          [None])
    except Exception as err:  # a broken file turns the checks off; the reading goes on
        logging.getLogger(__name__).warning("image-quality model not used: %s", err)
        return QualityChecker(notice=MODEL_UNUSABLE.format(path=path, error=err))
    return checker


@st.cache_resource(show_spinner=False)
def ood_detector():
    """The out-of-distribution check, or None when its reference file is missing."""
    from pneumo import ood

    return ood.load_detector()


@st.cache_data(show_spinner=False)
def predictions(split: str) -> dict[str, np.ndarray] | None:
    """``weights/{split}_predictions.csv`` as arrays, or None when missing."""
    from pneumo.evaluate import read_predictions

    name = config.TEST_PREDICTIONS_FILE if split == "test" else config.VAL_PREDICTIONS_FILE
    path = config.weights_path(name)
    return read_predictions(path) if path.exists() else None


@st.cache_data(show_spinner=False)
def json_file(name: str) -> dict | None:
    path = config.weights_path(name)
    return json.loads(path.read_text()) if path.exists() else None


@st.cache_data(show_spinner=False)
def history() -> dict[str, list] | None:
    """``weights/history.csv`` as columns (numbers as floats)."""
    path = config.weights_path(config.HISTORY_FILE)
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list] = {k: [] for k in rows[0]} if rows else {}
    for row in rows:
        for k, v in row.items():
            columns[k].append(v if k == "phase" else (float(v) if v not in ("", None) else None))
    return columns


def thresholds() -> dict[str, float]:
    """Named presets: 0.5, and the two chosen on validation when metrics.json exists."""
    presets = {"0.5 (default)": config.DEFAULT_THRESHOLD}
    metrics = json_file(config.METRICS_FILE)
    if metrics:
        t = metrics["thresholds"]
        presets[f"Recommended ({t['recommended']:.3f})"] = round(t["recommended"], 3)
        presets[f"High sensitivity ({t['high_sensitivity']:.3f})"] = round(t["high_sensitivity"], 3)
    return presets


def recommended_threshold() -> float:
    from pneumo.evaluate import recommended_threshold as from_metrics

    return from_metrics(json_file(config.METRICS_FILE))


def current_threshold() -> float:
    return float(st.session_state.get(THRESHOLD_KEY, recommended_threshold()))


def set_threshold(value: float) -> None:
    """Callback for preset buttons: moves the shared slider."""
    st.session_state[THRESHOLD_KEY] = float(value)


def _copy_slider_to_threshold() -> None:
    st.session_state[THRESHOLD_KEY] = st.session_state[_SLIDER_KEY]


def threshold_slider() -> float:
    """The shared decision threshold, in the sidebar of every page.

    The value lives in a plain session-state key (``THRESHOLD_KEY``) that survives page
    switches; the slider is re-seeded from it on every run and writes back when moved.
    """
    st.session_state.setdefault(THRESHOLD_KEY, recommended_threshold())
    st.session_state[_SLIDER_KEY] = st.session_state[THRESHOLD_KEY]
    st.sidebar.slider(
        "Decision threshold on P(pneumonia)", min_value=0.0, max_value=1.0, step=0.001,
        format="%.3f", key=_SLIDER_KEY, on_change=_copy_slider_to_threshold,
        help="Images at or above this probability are flagged PNEUMONIA. Tune it on the "
             "Threshold explorer page; every page uses the same value.",
    )
    return current_threshold()


def evidence_line(probability: float) -> str:
    """The test-set evidence for ``probability`` ("" without ``test_predictions.csv``)."""
    test = predictions("test")
    if test is None:
        return ""
    return wording.evidence_line(probability, test["probability"], test["label"])


@dataclass
class CardImages:
    """What one reading's card shows: the original and the heat-map overlay (None: hidden)."""

    original: np.ndarray
    overlay: np.ndarray | None
    strength: float  # share of the chosen opacity the overlay was drawn with
    caption: str


def card_images(reading: Reading, method: str, opacity: float, threshold: float,
                show_below_threshold: bool = False, outline: bool = False) -> CardImages:
    """The original (with the lung outline when asked and known) and the overlay.

    Below the threshold the heat map is hidden unless ``show_below_threshold``; then it is drawn
    fainter the lower the probability (:func:`pneumo.explain.heatmap_strength`).
    """
    from pneumo.explain import draw_outline, heatmap_strength, overlay

    original = reading.display
    edge = None
    if outline and reading.lungs is not None:
        edge = reading.lungs.outline(*original.shape[:2])
        original = draw_outline(original, edge)
    below = reading.probability < threshold
    if below and not show_below_threshold:
        return CardImages(original, None, 0.0, f"{method} hidden: below the threshold")
    strength = heatmap_strength(reading.probability, threshold)
    blended = overlay(reading.display, reading.cams[method], opacity * strength)
    if edge is not None:
        blended = draw_outline(blended, edge)
    caption = f"{method} overlay" + (" (faint: below the threshold)" if below else "")
    return CardImages(original, blended, strength, caption)


def lung_lines(reading: Reading, method: str) -> tuple[str | None, str | None]:
    """("Heat map inside the lungs: NN %", the outside-lungs caution or None); (None, None)
    when the share is not known (no segmenter, it failed, or the mask was implausible)."""
    share = reading.lung_share.get(method)
    if share is None:
        return None, None
    return wording.lung_share_text(share), wording.lung_caution(share)


def decision_badge(decision: str, threshold: float, muted: bool = False) -> str:
    colour = "#8a8f98" if muted else DECISION_COLOURS[decision]
    return (f'<span style="background:{colour};color:white;padding:0.25rem 0.7rem;'
            f'border-radius:0.4rem;font-weight:700;letter-spacing:0.03em">{decision}</span>'
            f'<span style="color:#555;margin-left:0.6rem">at threshold {threshold:.3f}</span>')


def distance_bar(probability: float, threshold: float, muted: bool = False) -> str:
    """A 0-100 % bar with the probability filled and the threshold marked."""
    decision = decide(probability, threshold)
    colour = "#b9bec6" if muted else DECISION_COLOURS[decision]
    gap = (probability - threshold) * 100
    words = f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} the threshold"
    return f"""
<div style="position:relative;height:16px;background:#e9edf1;border-radius:8px;margin:0.4rem 0">
  <div style="position:absolute;left:0;top:0;bottom:0;width:{probability * 100:.1f}%;
       background:{colour};border-radius:8px"></div>
  <div title="threshold" style="position:absolute;left:calc({threshold * 100:.1f}% - 1px);top:-4px;
       bottom:-4px;width:3px;background:#1d2733"></div>
</div>
<div style="display:flex;justify-content:space-between;color:#555;font-size:0.8rem">
  <span>0 %</span><span>{html.escape(words)}</span><span>100 %</span></div>"""


def intended_use_notice() -> None:
    st.sidebar.caption(
        "pneumo is a decision aid for pediatric (1-5 years) AP chest X-rays, trained on one "
        "centre's data. It is not a diagnosis. Images are processed in memory on this server "
        "and are never stored or sent anywhere."
    )


def rows_to_csv(rows: list[dict]) -> str:
    """Worklist rows as CSV text."""
    import io

    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def png_bytes_later(rgb: np.ndarray):
    """A callable that PNG-encodes ``rgb`` only when the download is clicked."""

    def encode() -> bytes:
        import cv2

        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return buf.tobytes()

    return encode
