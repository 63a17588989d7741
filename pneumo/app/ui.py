"""Streamlit helpers: cached resources and tables, the shared threshold, small HTML widgets.

The only module in ``pneumo`` that imports Streamlit.
"""

from __future__ import annotations

import csv
import html
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from pneumo import config
from pneumo.evaluation import artifacts
from pneumo.reading import reader, site, wording
from pneumo.reading.reader import Reading, decide

THRESHOLD_KEY = "threshold"
_SLIDER_KEY = "threshold_slider"
_SITE_KEY = "threshold_site"  # the site calibration the threshold was set under (None: bundled)
DECISION_COLOURS = config.CLASS_COLOURS


def explainer():
    """The server's one inference queue (:class:`pneumo.models.serving.InferenceQueue`): every session's
    images go through one worker that owns the model and batches them together.

    Created (and the model loaded and warmed up in the background) by the entry script's first
    run, so the model is ready before the first upload. Cached per version of the model file:
    a model replaced while the server runs is picked up on the next reading.
    """
    path = config.weights_path(config.MODEL_FILE)
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    return _inference_queue(str(path), stamp)


def _release_queue(queue) -> None:
    queue.close()


@st.cache_resource(show_spinner=False, max_entries=1, on_release=_release_queue)
def _inference_queue(path: str, stamp: tuple[int, int] | None):
    from pneumo.models.runtime import load_explainer
    from pneumo.models.serving import InferenceQueue

    return InferenceQueue(lambda: load_explainer(path))


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
    from pneumo.models.lungs import LungSegmenter

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

    from pneumo.models.quality import MODEL_UNUSABLE, QualityChecker

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
    from pneumo.models import ood

    return ood.load_detector()


def scope_check():
    """The scope check (DICOM header, then the pixel population check of
    ``weights/population.npz`` when present), cached per version of that file."""
    return _scope_check(_stamp(config.weights_path(config.POPULATION_FILE)))


@st.cache_resource(show_spinner=False, max_entries=1)
def _scope_check(stamp):
    from pneumo.models.population import load_population
    from pneumo.reading.scope import ScopeCheck

    try:
        population = load_population()
    except Exception as err:  # a broken file leaves the header check; the reading goes on
        logging.getLogger(__name__).warning("population check not used: %s", err)
        population = None
    return ScopeCheck(population)


@st.cache_data(show_spinner=False)
def predictions(split: str) -> artifacts.Predictions | None:
    """``weights/{split}_predictions.csv``, or None when missing."""
    return artifacts.read_predictions(split)


@st.cache_data(show_spinner=False)
def metrics() -> artifacts.Metrics | None:
    """``weights/metrics.json``, or None when missing."""
    return artifacts.read_metrics()


@st.cache_data(show_spinner=False)
def training() -> artifacts.TrainingRecord | None:
    """``weights/training.json``, or None when missing."""
    return artifacts.read_training()


@st.cache_data(show_spinner=False)
def lung_record() -> dict | None:
    """``weights/lungs.json`` (the lung-field segmenter's record), or None when missing."""
    return artifacts.read_record(config.LUNG_RECORD_FILE)


@st.cache_data(show_spinner=False)
def history() -> dict[str, list] | None:
    """``weights/history.csv`` as columns (numbers as floats)."""
    return artifacts.read_history()


# --- uploads: each file hashed and read once per session ---

READINGS_KEY = "readings"  # digest -> Reading, for the files currently uploaded
CORRECTED_KEY = "corrected_readings"  # digest -> Reading of the copy pneumo turned / inverted


def read_uploads(uploads, segmenter=None, quality_checker=None,
                 on_read: Callable[[int], None] | None = None) -> list[Reading]:
    """One reading per uploaded file, in upload order, site-calibrated when a site file is in use.

    Each file is hashed once per run and read once per session (the same bytes under two names
    are read once and shown twice); the readings of files no longer uploaded, and of their
    corrected copies, are forgotten. ``on_read(n)`` is called after ``n`` new files were read.
    """
    cache: dict = st.session_state.setdefault(READINGS_KEY, {})
    corrected: dict = st.session_state.setdefault(CORRECTED_KEY, {})
    files = [(u.name, u.getvalue()) for u in uploads or []]
    digests = [reader.digest_of(data) for _, data in files]
    new = {d: f for f, d in zip(files, digests) if d not in cache}
    if new:
        with st.status(f"Reading {len(new)} image(s)...", expanded=False) as status:
            bar = st.progress(0.0)
            results = reader.read_batch(
                list(new.values()), explainer(), ood_check=ood_detector(),
                progress=lambda frac, text: bar.progress(min(frac, 1.0), text=text),
                segmenter=segmenter, quality_checker=quality_checker, digests=list(new),
                scope_check=scope_check())
            for reading in results:
                cache[reading.digest] = reading
            if on_read is not None:
                on_read(len(new))
            status.update(label=f"Read {len(new)} image(s)", state="complete")
    kept = set(digests)
    for store in (cache, corrected):
        for digest in [d for d in store if d not in kept]:
            del store[digest]
    readings = [cache[d] if cache[d].name == name else replace(cache[d], name=name)
                for (name, _), d in zip(files, digests)]
    return [site_reading(r) for r in readings]


def corrected_reading(reading: Reading) -> Reading | None:
    """The reading of the copy pneumo turned or inverted back, once asked for (else None)."""
    found = st.session_state.get(CORRECTED_KEY, {}).get(reading.digest)
    if found is None:
        return None
    return site_reading(found if found.name == reading.name else replace(found, name=reading.name))


def read_corrected(reading: Reading, segmenter=None) -> bool:
    """Read the corrected copy of ``reading`` and keep it; False when there is none."""
    found = reader.read_corrected([reading], explainer(), ood_check=ood_detector(),
                                  segmenter=segmenter, scope_check=scope_check())
    if found:
        st.session_state.setdefault(CORRECTED_KEY, {})[reading.digest] = found[0]
    return bool(found)


def current_readings(readings: list[Reading]) -> list[Reading]:
    """Each reading, or the reading of its corrected copy when one was asked for: what the
    worklist and its CSV report."""
    return [corrected_reading(r) or r for r in readings]


# --- site calibration (pneumo.reading.site) ---

def _stamp(path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def site_status() -> site.SiteStatus:
    """The site file in use (or why one is ignored); re-read when it or the model changes."""
    path = site.site_file()
    return _site_status(str(path), _stamp(path),
                        _stamp(config.weights_path(config.MODEL_FILE)))


@st.cache_data(show_spinner=False)
def _site_status(path: str, stamp, model_stamp) -> site.SiteStatus:
    from pathlib import Path

    return site.load(Path(path).parent)


def active_site() -> site.SiteCalibration | None:
    """The site calibration every page uses, or None (the bundled calibration)."""
    return site_status().calibration


def site_name() -> str:
    """The site calibration's label for result rows ("" with the bundled calibration)."""
    cal = active_site()
    return "" if cal is None else cal.label


def site_banner() -> None:
    """On every page: which calibration is in use, or why a site file is ignored."""
    status = site_status()
    if status.calibration is not None:
        st.info(f"{status.calibration.banner}. Probabilities and the default threshold are this "
                "site's.", icon=":material/location_on:")
    elif status.message:
        st.warning(status.message, icon=":material/warning:")


def site_reading(reading: Reading) -> Reading:
    """The reading with its probability site-calibrated when a site file is in use."""
    return site.calibrate_reading(reading, active_site())


def site_note(reading: Reading) -> str | None:
    """"Calibrated for X; the model's own probability: 73 %." for a site-calibrated reading."""
    cal = active_site()
    if cal is None or reading.bundled_probability is None:
        return None
    return (f"Calibrated for {cal.site}; the model's own probability: "
            f"{wording.probability_text(reading.bundled_probability)}.")


def site_calibration_enabled() -> bool:
    """The app's "Calibrate for this site" section: config switch, or the environment variable."""
    value = os.environ.get(config.SITE_CALIBRATION_IN_APP_ENV, "").strip().lower()
    return config.SITE_CALIBRATION_IN_APP or value in ("1", "true", "yes", "on")


_CALIBRATION_DONE_KEY = "site_calibration_done"


def site_calibration_section() -> None:
    """Upload a zip of NORMAL/ and PNEUMONIA/, calibrate with the CLI's code, write site.json."""
    st.subheader("Calibrate for this site")
    st.caption(
        "Upload a zip holding a labelled sample of this department's chest X-rays in two folders, "
        "NORMAL/ and PNEUMONIA/ (PNG, JPEG or DICOM; a hundred or more images, the more the "
        "better). pneumo scores them, refits its probability on them, proposes thresholds, and "
        f"writes {site.site_file()} (numbers only: no image, no file name). The images are read "
        "in memory and forgotten. Same as `python -m pneumo.calibrate` on the command line.")
    done = st.session_state.pop(_CALIBRATION_DONE_KEY, None)
    if done:
        st.success("\n\n".join(done["lines"]), icon=":material/check_circle:")
        _skipped_list(done["skipped"])
    name = st.text_input("Site name", key="site_calibration_name", max_chars=100,
                         placeholder="e.g. St Mary's paediatric radiology")
    upload = st.file_uploader("Labelled sample (zip)", type=["zip"], key="site_calibration_zip")
    if not st.button("Calibrate for this site", disabled=not (name.strip() and upload),
                     icon=":material/tune:", key="site_calibration_run"):
        return
    cam = explainer()

    def score(images: np.ndarray) -> np.ndarray:
        return np.array([e.probability for e in cam.explain(images)])

    with st.status("Calibrating...", expanded=False) as status:
        bar = st.progress(0.0)
        try:
            items = site.zip_items(upload.getvalue())
            calibration, report, path = site.calibrate(
                items, name, score, site.model_fingerprint(),
                progress=lambda frac, text: bar.progress(min(frac, 1.0), text=text))
        except site.SiteSampleError as err:
            status.update(label="No site calibration written", state="error")
            st.error(str(err), icon=":material/error:")
            _skipped_list(err.report.skipped if err.report is not None else [])
            return
        status.update(label="Calibrated", state="complete")
    st.session_state[_CALIBRATION_DONE_KEY] = {
        "lines": site.summary_lines(calibration, report)
        + [f"Written to {path}. The threshold is now the site's recommended one."],
        "skipped": report.skipped}
    st.session_state[THRESHOLD_KEY] = calibration.recommended
    st.rerun()  # every page, the banner included, now uses it


def _skipped_list(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        with st.expander(f"{len(skipped)} file(s) skipped as unreadable"):
            st.table([{"File": name, "Why": why} for name, why in skipped])


def thresholds() -> dict[str, float]:
    """Named presets: 0.5, and the two chosen on validation when metrics.json exists.

    With a site calibration: the site's two first, then the training centre's two carried onto
    the site's probability scale (the same decisions as before calibrating).
    """
    presets = {"0.5 (default)": config.DEFAULT_THRESHOLD}
    found = metrics()
    cal = active_site()
    if cal is not None:
        presets[f"Site recommended ({cal.recommended:.3f})"] = cal.recommended
        presets[f"Site high sensitivity ({cal.high_sensitivity:.3f})"] = cal.high_sensitivity
        if found:
            t = found.thresholds
            for bundled, label in ((t.recommended_shown, "Training centre recommended"),
                                   (t.high_sensitivity_shown, "Training centre high sensitivity")):
                value = artifacts.round_threshold(cal.apply(bundled))
                presets[f"{label} ({value:.3f})"] = value
        return presets
    if found:
        t = found.thresholds
        presets[f"Recommended ({t.recommended_shown:.3f})"] = t.recommended_shown
        presets[f"High sensitivity ({t.high_sensitivity_shown:.3f})"] = t.high_sensitivity_shown
    return presets


def presets_origin() -> str:
    """Where the preset thresholds come from, in one sentence."""
    cal = active_site()
    centre = ("The training centre's recommended and high-sensitivity thresholds were chosen on "
              "its validation split, never on test")
    if cal is None:
        return centre + "."
    return (f"{cal.site}'s recommended and high-sensitivity thresholds were chosen on its own "
            f"sample of {cal.n_images:,} images by the same rules (sensitivity at least "
            f"{config.RECOMMENDED_SENSITIVITY_TARGET:.0%} and {config.HIGH_SENSITIVITY_TARGET:.0%}); "
            + centre[0].lower() + centre[1:] + ", shown here on the site's probability scale.")


def recommended_threshold() -> float:
    """The default threshold: the site's recommended one with a site file, else the bundled one."""
    cal = active_site()
    if cal is not None:
        return cal.recommended
    found = metrics()
    return config.DEFAULT_THRESHOLD if found is None else found.thresholds.recommended_shown


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
    cal = active_site()
    key = None if cal is None else [cal.site, cal.created, cal.scale, cal.bias]
    if st.session_state.get(_SITE_KEY, key) != key:  # the probability scale changed under us
        st.session_state[THRESHOLD_KEY] = recommended_threshold()
    st.session_state[_SITE_KEY] = key
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
    """The test-set evidence for ``probability`` ("" without ``test_predictions.csv``); with a
    site calibration, the site sample's (its probabilities are on the same scale)."""
    cal = active_site()
    if cal is not None:
        labels, probs = cal.sample()
        return wording.evidence_line(probability, probs, labels, source="site-sample")
    test = predictions("test")
    if test is None:
        return ""
    return wording.evidence_line(probability, test.probability, test.label)


EVIDENCE_TEST = "Official test set (624 images)"
EVIDENCE_VAL = "Validation split"


def evidence_options() -> list[str]:
    """The explorer's evidence views: test, validation, and this site's sample when there is one."""
    cal = active_site()
    site_view = [] if cal is None else [f"This site: {cal.site} ({cal.n_images:,} images)"]
    return [EVIDENCE_TEST, EVIDENCE_VAL, *site_view]


def evidence(option: str) -> dict | None:
    """label, probability, subtype (None: unknown) and a note for an evidence view; None when
    its predictions are missing. With a site calibration every view's probabilities are on the
    site's scale, so the shared threshold means the same as on the Read page."""
    cal = active_site()
    if option not in (EVIDENCE_TEST, EVIDENCE_VAL):
        if cal is None:
            return None
        labels, probs = cal.sample()
        return {"label": labels, "probability": probs, "subtype": None,
                "note": f"{cal.site}'s own sample: {cal.n_images:,} images "
                        f"({int(labels.sum()):,} with pneumonia), calibrated on themselves, so "
                        "these figures are in-sample: expect new images to do a little worse. "
                        f"{cal.banner}."}
    found = predictions("test" if option == EVIDENCE_TEST else "val")
    if found is None:
        return None
    data = {"label": found.label, "probability": found.probability, "subtype": found.subtype}
    if cal is None:
        return {**data, "note": None}
    return {**data, "probability": cal.apply(found.probability),
            "note": f"Probabilities after {cal.site}'s calibration, so the threshold means the "
                    "same here as on the Read page; decisions are the model's own at the "
                    "corresponding threshold."}


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
    fainter the lower the probability (:func:`pneumo.models.explain.heatmap_strength`).
    """
    from pneumo.models.explain import draw_outline, heatmap_strength, overlay

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
