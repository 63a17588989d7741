"""Streamlit helpers: cached resources and tables, the shared threshold, small HTML widgets.

The only module in ``pneumo`` that imports Streamlit.
"""

from __future__ import annotations

import csv
import html
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from pneumo import audit, config
from pneumo.app import access
from pneumo.evaluation import artifacts
from pneumo.reading import reader, site, wording
from pneumo.reading import trust as trust_states
from pneumo.reading.reader import Reading, decide

THRESHOLD_KEY = "threshold"
_SLIDER_KEY = "threshold_slider"
_SITE_KEY = "threshold_site"  # the site calibration the threshold was set under (None: bundled)
DECISION_COLOURS = config.CLASS_COLOURS


PAGES = (  # (script, title, icon); the first is the home page
    ("pages/read_xrays.py", "Read X-rays", ":material/radiology:"),
    ("pages/threshold_explorer.py", "Threshold explorer", ":material/tune:"),
    ("pages/model_card.py", "Model card", ":material/description:"),
)
ADMIN_PAGES = (  # shown to administrators only (everyone in laptop mode)
    ("pages/audit.py", "Audit", ":material/policy:"),
)
PACS_PAGE = ("pages/from_pacs.py", "From PACS", ":material/cloud_download:")  # a PACS configured
_APP = threading.local()  # .running: the entry script is running a page in this thread;
# .memo: values that cannot change within one script run (see _once_per_run)


def run_app() -> None:
    """The entry script: page setup, model warm-up, the shared sidebar (threshold, intended use),
    the navigation, then the page asked for."""
    _APP.memo = {}  # this run's (see _once_per_run); dropped when the run ends, even by st.stop
    try:
        st.set_page_config(page_title="pneumo", page_icon=":material/radiology:", layout="wide")
        user = access.gate(forget_session)  # sign-in, role, or stop here: nothing below is reachable
        audit_store()  # opened (tables made) at start-up: a wrong audit database stops here
        audit_error_notice()
        explainer()  # once per server: starts loading and warming the model in the background
        allowed = PAGES[:1] + ((PACS_PAGE,) if pacs_configured() else ()) + PAGES[1:] + (
            ADMIN_PAGES if user.is_admin else ())
        pages = [st.Page(script, title=title, icon=icon, default=i == 0)
                 for i, (script, title, icon) in enumerate(allowed)]
        threshold_slider()
        intended_use_notice()
        page = st.navigation(pages)
        note_page(page.url_path)
        _APP.running = True
        try:
            page.run()
        finally:
            _APP.running = False
    finally:
        _APP.memo = None


def _once_per_run(key: str, make: Callable[[], object]):
    """``make()`` once per script run of the entry script (its value is kept until the run
    ends); called afresh outside one (a widget's callback, a page run alone). For what a page
    asks for many times per run (the site file's state on every card) and cannot change within
    it: a change (a site calibration written) is followed by ``st.rerun``."""
    memo = getattr(_APP, "memo", None)
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def page_setup() -> None:
    """First line of every page. Streamlit lists a ``pages/`` folder by itself until a run has
    called ``st.navigation``; on a fresh server, an address such as ``/threshold_explorer``
    opened before the home page runs that page alone (its automatic page list, no sidebar, no
    intended-use note). Then this runs the whole app instead (the same navigation, sidebar and
    notes, and the page asked for) and stops the lone run."""
    if getattr(_APP, "running", False):
        return
    run_app()
    st.stop()


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


@st.cache_data(show_spinner=False)
def population_record() -> dict | None:
    """``weights/population.json``: the pixel population check's fit and figures, or None."""
    from pneumo.models.population import read_record

    return read_record()


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

READINGS_KEY = "readings"  # digest -> Reading, for the files this session shows
CORRECTED_KEY = "corrected_readings"  # digest -> Reading of the copy pneumo turned / inverted
SHOWN_KEY = "shown_files"  # [(name, digest)]: the readings this session shows, in upload order
IN_BOX_KEY = "files_in_box"  # [(name, digest)]: what the upload box held on its last run
_PAGE_KEY, _LAST_PAGE_KEY = "page_now", "page_before"


def note_page(name: str) -> None:
    """Called by the entry script on every run with the page about to run."""
    st.session_state[_LAST_PAGE_KEY] = st.session_state.get(_PAGE_KEY)
    st.session_state[_PAGE_KEY] = name


def arrived_from_another_page() -> bool:
    """True on the first run of a page after another one (or the session's first run): its
    widgets, the upload box included, start empty."""
    return st.session_state.get(_LAST_PAGE_KEY) != st.session_state.get(_PAGE_KEY)


def upload_label() -> str:
    """The upload box's label: the file types it takes and the size limit."""
    from pneumo.io.images import SUPPORTED_EXTENSIONS

    names = {"jpg": "JPEG", "tif": "TIFF", "webp": "WebP", "dcm": "DICOM"}
    kinds = dict.fromkeys(names.get(e.lstrip("."), e.lstrip(".").upper())
                          for e in SUPPORTED_EXTENSIONS)
    ordered = ["DICOM", *(k for k in kinds if k != "DICOM")] if "DICOM" in kinds else list(kinds)
    return f"Chest X-rays: {', '.join(ordered)}; up to {config.MAX_UPLOAD_MB} MB per file"


def read_uploads(uploads, segmenter=None, quality_checker=None,
                 on_read: Callable[[int], None] | None = None,
                 box_is_new: bool = False) -> list[Reading]:
    """One reading per file this session shows, in upload order, site-calibrated when a site file
    is in use.

    The readings live in the session, not in the upload box: a page change empties the box
    (``box_is_new``: this is its first run since) but keeps them. A file removed from the box
    while it is shown forgets its reading (and its corrected copy's); the rest go with the
    session, or with :func:`forget_readings`. Each file is hashed once per run and read once per
    session (the same bytes under two names are read once and shown twice).
    ``on_read(n)`` is called after ``n`` new files were read.
    """
    cache: dict = st.session_state.setdefault(READINGS_KEY, {})
    corrected: dict = st.session_state.setdefault(CORRECTED_KEY, {})
    files = [(u.name, u.getvalue()) for u in uploads or []]
    digests = [reader.digest_of(data) for _, data in files]
    box = list(dict.fromkeys(zip((name for name, _ in files), digests)))
    before = [] if box_is_new else st.session_state.get(IN_BOX_KEY, [])
    shown = [item for item in st.session_state.get(SHOWN_KEY, []) if item in box
             or item not in before]  # removed from the box: forgotten
    shown += [item for item in box if item not in shown]
    st.session_state[IN_BOX_KEY], st.session_state[SHOWN_KEY] = box, shown
    new = {d: f for f, d in zip(files, digests) if d not in cache}
    if new:
        read_new(new, segmenter, quality_checker, len(box))
        if on_read is not None:
            on_read(len(new))
    kept = {d for _, d in shown}
    for store in (cache, corrected, st.session_state.get(PACS_KEY, {})):
        for digest in [d for d in store if d not in kept]:
            del store[digest]
    readings = [cache[d] if cache[d].name == name else replace(cache[d], name=name)
                for name, d in shown]
    return [site_reading(r) for r in readings]


def read_new(new: dict[str, tuple[str, bytes]], segmenter=None, quality_checker=None,
             shown: int | None = None) -> list[Reading]:
    """Read files (digest -> (name, bytes)) once, the way every file is read (uploads and
    images from the PACS): the server's models and checks, one audit record per reading
    written first, then each kept in the session's cache. ``shown``: how many files the page
    shows, for the status line."""
    cache: dict = st.session_state.setdefault(READINGS_KEY, {})
    with st.status(f"Reading {wording.plural(len(new), 'new file')}...",
                   expanded=False) as status:
        bar = st.progress(0.0)
        results = reader.read_batch(
            list(new.values()), explainer(), ood_check=ood_detector(),
            progress=throttled(lambda frac, text: bar.progress(min(frac, 1.0), text=text)),
            segmenter=segmenter, quality_checker=quality_checker, digests=list(new),
            scope_check=scope_check())
        record_readings([site_reading(r) for r in results])  # one audit record each, first
        for reading in results:
            cache[reading.digest] = reading
        unreadable = sum(1 for r in results if r.error)
        status.update(label=wording.files_read_text(len(results), unreadable,
                                                    len(results) if shown is None else shown),
                      state="error" if unreadable == len(results) else "complete")
    return results


def throttled(update: Callable[[float, str], None],
              interval_s: float = config.PROGRESS_INTERVAL_S) -> Callable[[float, str], None]:
    """``update(fraction, text)`` at most once per ``interval_s`` (the first call and the last,
    fraction 1, always): each update is a message to the browser, and a reading reports
    progress per file and per chunk."""
    last = [float("-inf")]

    def call(fraction: float, text: str) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - last[0] >= interval_s:
            last[0] = now
            update(fraction, text)

    return call


# --- the PACS (pneumo.io.pacs; the From PACS page is pneumo.app.pacs_ui) ---

PACS_KEY = "pacs_images"  # digest -> PacsImage, for the shown readings retrieved from the PACS


@dataclass(frozen=True)
class PacsImage:
    """Where a shown reading came from in the PACS: its label on the cards and in the worklist
    (patient and study, never a file name), the instance, and its header without pixels (to
    store results back in its study). Kept in the session's memory only."""

    label: str
    ref: object  # pneumo.io.pacs.InstanceRef
    header: object  # pydicom Dataset without pixel data


def pacs_settings():
    """The configured PACS (:class:`pneumo.io.pacs.PacsSettings`), or None when none is: the
    environment, else ``[pacs]`` of the app's secrets. Contacts nothing. Raises
    :class:`pneumo.io.pacs.PacsNotConfigured` for a configuration that cannot work."""
    from pneumo.io import pacs

    return pacs.load_settings(secrets=access.secrets())


def pacs_configured() -> bool:
    """True when a PACS is configured, even wrongly (its page then says what is wrong)."""
    from pneumo.io import pacs

    try:
        return pacs_settings() is not None
    except pacs.PacsNotConfigured:
        return True


def add_pacs_readings(items: list[tuple[PacsImage, bytes]], segmenter=None,
                      quality_checker=None) -> list[Reading]:
    """Read images retrieved from the PACS (each at most once a session) through the uploads'
    path, and show them on the Read X-rays page (cards and worklist) under their labels, after
    what is shown already. Returns their readings, site-calibrated."""
    cache: dict = st.session_state.setdefault(READINGS_KEY, {})
    origin: dict = st.session_state.setdefault(PACS_KEY, {})
    shown: list = st.session_state.setdefault(SHOWN_KEY, [])
    named = [(image, reader.digest_of(data), data) for image, data in items]
    new = {d: (image.label, data) for image, d, data in named if d not in cache}
    if new:
        read_new(new, segmenter, quality_checker)
    for image, digest, _ in named:
        origin[digest] = image
        if (image.label, digest) not in shown:
            shown.append((image.label, digest))
    return [site_reading(replace(cache[d], name=image.label)) for image, d, _ in named]


def pacs_readings() -> list[tuple[PacsImage, Reading]]:
    """The shown readings retrieved from the PACS, site-calibrated, in the order shown."""
    cache = st.session_state.get(READINGS_KEY, {})
    origin = st.session_state.get(PACS_KEY, {})
    return [(origin[d], site_reading(replace(cache[d], name=name)))
            for name, d in st.session_state.get(SHOWN_KEY, []) if d in origin and d in cache]


def kept_outside_the_box() -> int:
    """How many shown readings have no file in the upload box (it was emptied by a page change);
    readings from the PACS are not counted (they never had a file)."""
    box = st.session_state.get(IN_BOX_KEY, [])
    origin = st.session_state.get(PACS_KEY, {})
    return sum(1 for item in st.session_state.get(SHOWN_KEY, [])
               if item not in box and item[1] not in origin)


def forget_readings() -> None:
    """Forget every reading of this session (a button's callback); the box is left as it is."""
    box = st.session_state.get(IN_BOX_KEY, [])
    st.session_state[SHOWN_KEY] = list(box)
    keep = {d for _, d in box}
    for store_key in (READINGS_KEY, CORRECTED_KEY, PACS_KEY):
        store = st.session_state.get(store_key, {})
        for digest in [d for d in store if d not in keep]:
            del store[digest]


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
        record_readings([site_reading(found[0])], audit.READING_CORRECTED)
    return bool(found)


_CORRECTION_REQUESTS_KEY = "correction_requests"


def request_correction(digest: str) -> None:
    """A correction button's callback: the request is kept in the session, so a second click
    that interrupts the first one's run does not lose it (#21)."""
    requests = st.session_state.setdefault(_CORRECTION_REQUESTS_KEY, [])
    if digest not in requests:
        requests.append(digest)


def read_requested_corrections(readings: list[Reading], segmenter=None) -> None:
    """Read the corrected copy of every film whose correction was asked for and is not read
    yet, in the order asked; each request is dropped once its reading is kept."""
    requests = st.session_state.get(_CORRECTION_REQUESTS_KEY, [])
    if not requests:
        return
    by_digest = {r.digest: r for r in readings}
    with st.spinner("Reading the corrected image..."):
        for digest in list(requests):
            reading = by_digest.get(digest)
            if reading is not None and corrected_reading(reading) is None:
                read_corrected(reading, segmenter)
            requests.remove(digest)


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
    def read() -> site.SiteStatus:
        path = site.site_file()
        return _site_status(str(path), _stamp(path), _stamp(config.weights_path(config.MODEL_FILE)))

    return _once_per_run("site_status", read)  # asked for by every card


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


def site_note(reading: Reading, threshold: float | None = None) -> str | None:
    """"Calibrated for X; the model's own probability: 73 %." for a site-calibrated reading, and,
    when the threshold in use is the site's recommended one, what it means: a PNEUMONIA badge
    above a probability under 50 % is otherwise a puzzle."""
    cal = active_site()
    if cal is None or reading.bundled_probability is None:
        return None
    note = (f"Calibrated for {cal.site}; the model's own probability: "
            f"{wording.probability_text(reading.bundled_probability)}.")
    if threshold is not None and abs(threshold - round(cal.recommended, 3)) < 5e-4:
        note += (f" The decision uses {cal.site}'s recommended threshold "
                 f"({wording.percent(threshold)}), the highest that found at least "
                 f"{wording.percent(config.RECOMMENDED_SENSITIVITY_TARGET)} of the pneumonias in "
                 "its own sample: films from there up are flagged.")
    return note


def site_calibration_enabled() -> bool:
    """The app's "Calibrate for this site" section: config switch, or the environment variable."""
    value = os.environ.get(config.SITE_CALIBRATION_IN_APP_ENV, "").strip().lower()
    return config.SITE_CALIBRATION_IN_APP or value in ("1", "true", "yes", "on")


_CALIBRATION_DONE_KEY = "site_calibration_done"


def _who() -> str:
    """Who is making a change: the signed-in user's e-mail or name, else "this server"."""
    try:
        if st.user.is_logged_in:
            return str(st.user.get("email") or st.user.get("name") or "a signed-in user")
    except Exception:  # no sign-in configured: st.user has nothing to say
        pass
    return "this server"


_PENDING_SITE_KEY = "site_calibration_pending"


def site_calibration_section() -> None:
    """Upload a zip of NORMAL/ and PNEUMONIA/, calibrate with the CLI's code, and write site.json
    only when the sample can support it (:func:`pneumo.reading.site.acceptance_problem`) and,
    when one is in use, after the user confirms replacing it. Shows what is in use, and removes it."""
    st.subheader("Calibrate for this site")
    status = site_status()
    current = status.calibration
    if current is not None:
        st.info(f"In use: {current.banner}, set on {current.created} by "
                f"{current.set_by or 'this server'} ({current.counts['NORMAL']} NORMAL, "
                f"{current.counts['PNEUMONIA']} PNEUMONIA images).", icon=":material/location_on:")
        if st.toggle("Remove the site calibration", key="site_remove_open"):
            st.warning("Every user of this server will get the bundled calibration and thresholds "
                       "again.", icon=":material/warning:")
            if st.button("Yes, remove it", key="site_remove_confirm", icon=":material/delete:"):
                site.remove()
                record_site_change(current, None)  # audit: old and new values
                st.session_state.pop(THRESHOLD_KEY, None)
                st.session_state[_CALIBRATION_DONE_KEY] = {
                    "lines": [f"Removed the calibration for {current.site}; the bundled one is in use."],
                    "skipped": []}
                st.rerun()
    else:
        st.caption("No site calibration is in use: probabilities are the bundled model's.")
    st.caption(
        "Upload a zip holding a labelled sample of this department's chest X-rays in two folders, "
        "NORMAL/ and PNEUMONIA/ (PNG, JPEG or DICOM; at least "
        f"{config.SITE_SMALL_PER_CLASS} of each class, a few hundred is better). pneumo scores "
        "them, refits its probability on them, proposes thresholds, and writes "
        f"{site.site_file()} (numbers only: no image, no file name), for every user of this "
        "server. A sample too small, or one on which a site calibration would make the "
        "probabilities less reliable than the bundled one, is refused. The images are read in "
        "memory and forgotten. Same as `python -m pneumo.calibrate` on the command line.")
    done = st.session_state.pop(_CALIBRATION_DONE_KEY, None)
    if done:
        st.success("\n\n".join(done["lines"]), icon=":material/check_circle:")
        _skipped_list(done["skipped"])
    pending = st.session_state.get(_PENDING_SITE_KEY)
    if pending is not None:
        new, lines = pending
        st.warning(f"Replace the calibration in use ({current.banner if current else 'none'}, set on "
                   f"{current.created if current else '-'}) with the new one for {new.site}?",
                   icon=":material/swap_horiz:")
        st.markdown("\n\n".join(lines))
        keep, swap = st.columns(2)
        if swap.button("Replace it", key="site_replace_confirm", type="primary"):
            _write_site(new, lines)
        if keep.button("Keep the one in use", key="site_replace_cancel"):
            st.session_state.pop(_PENDING_SITE_KEY, None)
            st.rerun()
        return
    name = st.text_input("Site name", key="site_calibration_name", max_chars=100,
                         placeholder="e.g. St Mary's paediatric radiology")
    upload = st.file_uploader("Labelled sample (zip)", type=["zip"], key="site_calibration_zip")
    if not st.button("Calibrate for this site", disabled=not (name.strip() and upload),
                     icon=":material/tune:", key="site_calibration_run"):
        return
    cam = explainer()

    def score(images: np.ndarray) -> np.ndarray:
        return np.array([e.probability for e in cam.explain(images)])

    screen = site.trust_screen(cam, ood_detector(), segmenter(), quality_checker(), scope_check())
    with st.status("Calibrating...", expanded=False) as progress_box:
        bar = st.progress(0.0)
        try:
            items = site.zip_items(upload.getvalue())
            calibration, report, _ = site.calibrate(
                items, name, score, site.model_fingerprint(),
                progress=lambda frac, text: bar.progress(min(frac, 1.0), text=text),
                screen=screen, write=False, set_by=_who())
            problem = site.acceptance_problem(calibration)
        except site.SiteSampleError as err:
            progress_box.update(label="No site calibration written", state="error")
            err_report = err.report
            problem, calibration, report = str(err), None, err_report
        if problem is not None:
            progress_box.update(label="No site calibration written", state="error")
        else:
            progress_box.update(label="Calibrated", state="complete")
    if problem is not None:  # the reason in plain sight, outside the closed status box
        st.error(f"No site calibration written. {problem}", icon=":material/error:")
        _skipped_list(report.skipped if report is not None else [])
        _left_out_list(report.left_out if report is not None else [])
        return
    lines = site.summary_lines(calibration, report)
    if current is not None:
        st.session_state[_PENDING_SITE_KEY] = (calibration, lines)
        st.rerun()
    _write_site(calibration, lines, report)


def _write_site(calibration, lines: list[str], report=None) -> None:
    before = active_site()
    path = site.save(calibration)
    record_site_change(before, calibration)  # audit: old and new values
    st.session_state.pop(_PENDING_SITE_KEY, None)
    st.session_state[_CALIBRATION_DONE_KEY] = {
        "lines": lines + [f"Written to {path}. The threshold is now the site's recommended one."],
        "skipped": report.skipped if report is not None else []}
    st.session_state[THRESHOLD_KEY] = calibration.recommended
    st.rerun()  # every page, the banner included, now uses it


def _left_out_list(left_out: list[tuple[str, str]]) -> None:
    if left_out:
        with st.expander(f"{len(left_out)} image(s) left out: pneumo would not answer about them"):
            st.table([{"File": name, "Why": why} for name, why in left_out])


def _skipped_list(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        with st.expander(f"{len(skipped)} file(s) skipped as unreadable"):
            st.table([{"File": name, "Why": why} for name, why in skipped])


def thresholds() -> dict[str, float]:
    """Named presets: 0.5, and the two chosen on validation when metrics.json exists.

    With a site calibration: the site's two first, then the training centre's two carried onto
    the site's probability scale (the same decisions as before calibrating).
    """
    found = metrics()
    cal = active_site()
    department = department_threshold()
    default = start_threshold()

    def named(label: str, value: float) -> str:  # the slider starts at the default
        return f"{label} ({value:.3f}, default)" if value == default else f"{label} ({value:.3f})"

    presets = {} if department is None else {f"Department default ({department:.3f})": department}
    presets["0.5" + (" (default)" if default == config.DEFAULT_THRESHOLD else "")] = \
        config.DEFAULT_THRESHOLD
    if cal is not None:
        presets[named("Site recommended", cal.recommended)] = cal.recommended
        presets[named("Site high sensitivity", cal.high_sensitivity)] = cal.high_sensitivity
        if found:
            t = found.thresholds
            for bundled, label in ((t.recommended_shown, "Training centre recommended"),
                                   (t.high_sensitivity_shown, "Training centre high sensitivity")):
                value = artifacts.round_threshold(cal.apply(bundled))
                presets[f"{label} ({value:.3f})"] = value
        return presets
    if found:
        t = found.thresholds
        presets[named("Recommended", t.recommended_shown)] = t.recommended_shown
        presets[named("High sensitivity", t.high_sensitivity_shown)] = t.high_sensitivity_shown
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


def start_threshold() -> float:
    """Where a session's slider starts: the department's default threshold when an administrator
    set one (under the calibration in use), else :func:`recommended_threshold`."""
    department = department_threshold()
    return recommended_threshold() if department is None else department


def current_threshold() -> float:
    value = st.session_state.get(THRESHOLD_KEY)
    return float(start_threshold() if value is None else value)


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
        st.session_state[THRESHOLD_KEY] = start_threshold()
    st.session_state[_SITE_KEY] = key
    if THRESHOLD_KEY not in st.session_state:  # then the user's own, for the session
        st.session_state[THRESHOLD_KEY] = start_threshold()
    st.session_state[_SLIDER_KEY] = st.session_state[THRESHOLD_KEY]
    st.sidebar.slider(
        "Decision threshold on P(pneumonia)", min_value=0.0, max_value=1.0, step=0.001,
        format="%.3f", key=_SLIDER_KEY, on_change=_copy_slider_to_threshold,
        help="Images at or above this probability are flagged PNEUMONIA. Tune it on the "
             "Threshold explorer page; every page uses the same value.",
    )
    return current_threshold()


PREVALENCE_KEY = "prevalence"  # percent, kept across page changes like the threshold
_PREVALENCE_INPUT = "prevalence_input"


def _copy_prevalence() -> None:
    st.session_state[PREVALENCE_KEY] = st.session_state[_PREVALENCE_INPUT]


def prevalence_input(default: float) -> float:
    """The explorer's prevalence (0..1), in percent on screen; ``default``: the evidence's own
    share of pneumonia. Kept for the session like the threshold."""
    st.session_state.setdefault(PREVALENCE_KEY, round(default * 100, 1))
    st.session_state[_PREVALENCE_INPUT] = st.session_state[PREVALENCE_KEY]
    value = st.number_input(
        "Prevalence of pneumonia among the films you read (%)", min_value=0.1, max_value=99.9,
        step=1.0, format="%.1f", key=_PREVALENCE_INPUT, on_change=_copy_prevalence,
        help=f"Starts at the official test set's share ({default:.1%}); enter your "
             "department's to see the predictive values you can expect.")
    return float(value) / 100


def evidence_lines(probability: float) -> list[str]:
    """The test-set evidence for ``probability`` (none without ``test_predictions.csv``), then,
    where the share observed there differs from the probability by more than 15 points, the
    sentence saying the estimate runs high or low in that range; with a site calibration, the
    site sample's (its probabilities are on the same scale)."""
    cal = active_site()
    if cal is not None:
        labels, probs, source = *cal.sample(), "site-sample"
    else:
        test = _once_per_run("test_predictions", lambda: predictions("test"))  # every card
        if test is None:
            return []
        labels, probs, source = test.label, test.probability, "test"
    lines = [wording.evidence_line(probability, probs, labels, source=source),
             wording.evidence_gap(probability, probs, labels, source=source)]
    return [line for line in lines if line]


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
        return CardImages(original, None, 0.0, _overlay_caption(method, below, hidden=True))
    strength = heatmap_strength(reading.probability, threshold)
    blended = overlay(reading.display, reading.cams[method], opacity * strength)
    if edge is not None:
        blended = draw_outline(blended, edge)
    return CardImages(original, blended, strength, _overlay_caption(method, below, hidden=False))


def _overlay_caption(method: str, below: bool, hidden: bool) -> str:
    if hidden:
        return f"{method} hidden: below the threshold"
    return f"{method} overlay" + (" (faint: below the threshold)" if below else "")


@dataclass
class CardPictures:
    """:class:`CardImages` encoded for ``st.image``: JPEG bytes, the very bytes Streamlit would
    make of the arrays (quality 100), so the page shows the same pixels."""

    original: bytes
    overlay: bytes | None  # None: hidden below the threshold
    caption: str
    overlay_png: Callable[[], bytes] | None  # the overlay as PNG, made when downloaded


_PICTURES_KEY = "card_pictures"  # card key -> {picture: (what it was drawn with, JPEG bytes)}


def kept_jpeg(key: str, picture: str, look: tuple, rgb: Callable[[], np.ndarray]) -> bytes:
    """The JPEG of ``rgb()`` for one picture of a card, made once per ``look`` (what the picture
    depends on) and kept in the session: a rerun that changes nothing it shows (another card's
    toggle, the worklist filter) neither draws nor encodes it again. Only the current look of
    each picture is kept; :func:`forget_pictures_except` drops cards no longer drawn."""
    card: dict = st.session_state.setdefault(_PICTURES_KEY, {}).setdefault(key, {})
    found = card.get(picture)
    if found is None or found[0] != look:
        found = card[picture] = (look, _jpeg(rgb()))
    return found[1]


def card_pictures(reading: Reading, key: str, method: str, opacity: float, threshold: float,
                  show_below_threshold: bool = False, outline: bool = False) -> CardPictures:
    """:func:`card_images` of the card ``key``, as JPEG kept per look (:func:`kept_jpeg`)."""
    from functools import cache

    from pneumo.models.explain import heatmap_strength

    outlined = outline and reading.lungs is not None
    below = reading.probability < threshold
    hidden = below and not show_below_threshold
    view = cache(lambda: card_images(reading, method, opacity, threshold, show_below_threshold,
                                     outline))
    original = kept_jpeg(key, "original", (reading.digest, outlined), lambda: view().original)
    shown = None
    if not hidden:
        alpha = round(opacity * heatmap_strength(reading.probability, threshold), 6)
        shown = kept_jpeg(key, "overlay", (reading.digest, outlined, method, alpha),
                          lambda: view().overlay)
    else:
        st.session_state[_PICTURES_KEY][key].pop("overlay", None)

    def overlay_png() -> bytes:  # drawn again: a download is rare, the arrays are not kept
        drawn = card_images(reading, method, opacity, threshold, show_below_threshold, outline)
        return png_bytes_later(drawn.overlay)()

    return CardPictures(original, shown, _overlay_caption(method, below, hidden),
                        None if hidden else overlay_png)


def forget_pictures_except(keys: set[str]) -> None:
    """Drop the kept pictures of every card not in ``keys`` (the cards this run drew)."""
    store: dict = st.session_state.get(_PICTURES_KEY, {})
    for key in [k for k in store if k not in keys]:
        del store[key]


def _jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes exactly as ``st.image`` encodes an RGB array (PIL, quality 100)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype="uint8")).save(out, format="JPEG", quality=100)
    return out.getvalue()


def lung_lines(reading: Reading, method: str, threshold: float | None = None
               ) -> tuple[str | None, str | None]:
    """("Heat map inside the lungs: NN %", the outside-lungs caution or None); (None, None)
    when the share is not known (no segmenter, it failed, or the mask was implausible) or the
    reading is out of scope. The caution only at or above ``threshold``, where the map explains
    a decision (below it a faint map on a clean film would only alarm)."""
    share = reading.lung_share.get(method)
    if share is None or reading.trust.state == trust_states.OUT_OF_SCOPE:
        return None, None
    caution = wording.lung_caution(share)
    if threshold is not None and reading.probability < threshold:
        caution = None
    return wording.lung_share_text(share), caution


def empty_heat_map(reading: Reading, method: str) -> str | None:
    """"Nothing in this film raised the score..." when the method's map is all zeros."""
    cam = reading.cams.get(method)
    if cam is None or float(np.max(cam, initial=0.0)) > 1e-6:
        return None
    return wording.EMPTY_HEAT_MAP.format(method=method)


OUTSIDE_POPULATION = "outside the validated population"
MUTED_COLOUR = "#8a8f98"
NO_VALUE = "\u2014"  # shown where the worklist has no number (a withheld or missing reading)


def card_decision(reading: Reading, threshold: float) -> tuple[str, bool]:
    """(what the card's badge says, greyed): the decision for a trusted reading; qualified and
    greyed otherwise ("NORMAL as uploaded - doubtful", "PNEUMONIA - outside the validated
    population"), so a doubtful or out-of-scope film never shows a bare NORMAL or PNEUMONIA."""
    decision = decide(reading.probability, threshold)
    state = reading.trust.state
    if state == trust_states.TRUSTED:
        return decision, False
    if state == trust_states.DOUBTFUL:
        return f"{decision} as uploaded \u2014 doubtful", True
    return f"{decision} \u2014 {OUTSIDE_POPULATION}", True


def decision_badge(decision: str, threshold: float, muted: bool = False) -> str:
    colour = MUTED_COLOUR if muted else DECISION_COLOURS[decision]
    return (f'<span style="background:{colour};color:white;display:inline-block;padding:0.25rem 0.7rem;'
            f'border-radius:0.4rem;font-weight:700;letter-spacing:0.03em">'
            f'{html.escape(decision)}</span>'
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


MUTED_CARD = "pneumo-muted"  # container key prefix of a greyed card (see card_styles)


def card_key(reading: Reading, suffix: str = "") -> str:
    """A key for one card's widgets and containers: letters, digits and dashes only."""
    import re

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", reading.name)[:40]
    return f"{reading.digest[:16]}-{name}{suffix}"


def card_anchor(reading: Reading) -> str:
    """The in-page anchor of a reading's card (the worklist links to it)."""
    return "card-" + card_key(reading).lower()


def card_styles() -> None:
    """Once per run of the Read page: greyed cards (images faded, the probability not in black)
    and the heat-map colour bar held to its column."""
    st.html(f"""<style>
[class*="st-key-{MUTED_CARD}"] img {{ filter: grayscale(0.85); opacity: 0.55; }}
[class*="st-key-{MUTED_CARD}"] [data-testid="stMetricValue"] {{ color: {MUTED_COLOUR}; }}
[class*="st-key-colour-scale"] img {{ max-width: 100%; height: auto; }}
</style>""")


def worklist_table(rows: list[dict], readings: list[Reading], flagged_only: bool = False):
    """The worklist for ``st.dataframe``: (a pandas Styler, column config in display order).

    ``rows``: :func:`pneumo.reading.reader.worklist_rows` of ``readings`` (flagged first). The
    probability stays a number (a header click sorts by it) shown as :func:`probability_text`;
    flagged rows are tinted. (No link column: Streamlit opens those in a new tab, a new session
    without these readings; :func:`card_links` links every card in the page instead.)
    """
    import pandas as pd

    chosen = [row for row in rows if row["flagged"]] if flagged_only else rows
    order = ["file", "probability", "decision", "trust", "reason", "threshold", "corrected",
             "warning"]
    if any(row.get("members_pneumonia") for row in rows):  # an ensemble: its models' vote
        order.insert(4, "members")
    def withheld(row) -> bool:  # an out-of-scope film's reading is withheld here as on its card
        return row["trust"] == trust_states.OUT_OF_SCOPE

    frame = pd.DataFrame([{
        "file": row["file"],
        "probability": None if withheld(row) else row["probability_pneumonia"],
        "decision": row["decision"], "trust": row["trust_label"], "reason": row["why_flagged"],
        "threshold": row["threshold"], "corrected": row["corrected"], "warning": row["warning"],
        "members": "" if withheld(row) else row.get("members_pneumonia", "") + (
            " \u2014 disagree" if row.get("members_disagree") else ""),
    } for row in chosen], columns=order)
    trusted = trust_states.LABELS[trust_states.TRUSTED]

    def tint(row) -> list[str]:  # flagged: tinted; not trusted: its text muted too
        if row["trust"] != trusted:
            style = f"background-color: #fff4e0; color: {MUTED_COLOUR}"
        else:  # a trusted film is flagged only by its models' split vote, its "Why flagged"
            style = "background-color: #fff4e0" if row["reason"] else ""
        return [style] * len(row)

    styler = frame.style.format({"probability": wording.probability_text,
                                 "threshold": "{:.3f}"}, na_rep=NO_VALUE).apply(tint, axis=1)
    col = st.column_config
    columns = {
        "file": col.TextColumn("File", pinned=True),
        "probability": col.NumberColumn(
            "P(pneumonia)", help="Calibrated probability of pneumonia; sorts as a number."),
        "decision": col.TextColumn(
            "Decision", help="PNEUMONIA or NORMAL only for a trusted reading."),
        "trust": col.TextColumn("Trust"),
        "members": col.TextColumn(
            "Models: pneumonia", help="How many of the ensemble's models say pneumonia at this "
                                      "threshold; 'disagree' when at least two are on each side."),
        "reason": col.TextColumn("Why flagged", width="large",
                                 help="In full in the list under the table and on the card."),
        "threshold": col.NumberColumn("Threshold"),
        "corrected": col.TextColumn("Corrected by pneumo"),
        "warning": col.TextColumn("All warnings and notes", width="large"),
    }
    return styler, {k: v for k, v in columns.items() if k in order}


_WORKLIST_KEY = "worklist_table"  # (what it was built from, (Styler, column config))


def kept_worklist_table(rows: list[dict], readings: list[Reading], flagged_only: bool = False):
    """:func:`worklist_table`, built once per set of rows (the readings at the threshold, the
    site's name) and filter and kept in the session: a rerun that changes none of them (a heat-map
    toggle, the opacity slider) does not build the frame and its Styler again."""
    made_of = (flagged_only, repr(rows))
    kept = st.session_state.get(_WORKLIST_KEY)
    if kept is None or kept[0] != made_of:
        kept = st.session_state[_WORKLIST_KEY] = (made_of, worklist_table(rows, readings,
                                                                          flagged_only))
    return kept[1]


def worklist_height(n_rows: int, most: int = 15) -> int:
    """Pixels for the worklist: every row up to ``most``, then it scrolls."""
    return 38 + 35 * max(1, min(n_rows, most))


def _markdown_text(text: str) -> str:
    import re

    return re.sub(r"([\\`*_{}\[\]()#+!|<>~$-])", r"\\\1", text)


def flagged_line(row: dict, reading: Reading) -> str:
    """One markdown list item for a flagged worklist row: the file (linked to its card), its
    trust state unless trusted (a split vote), and why it is flagged, in full."""
    name = _markdown_text(row["file"])
    link = f"[{name}](#{card_anchor(reading)})" if reading.ok else name
    state = "" if row["trust"] == trust_states.TRUSTED else f"{row['trust_label']}. "
    return f"- **{link}**: {state}{_markdown_text(row['why_flagged'])}"


def card_links(rows: list[dict], readings: list[Reading]) -> str:
    """One markdown line linking each readable film's card, in the worklist's order."""
    links = [f"[{_markdown_text(row['file'])}](#{card_anchor(readings[row['index']])})"
             for row in rows if readings[row["index"]].ok]
    return "**Cards**: " + " \u00b7 ".join(links) if links else ""


def csv_rows(rows: list[dict]) -> list[dict]:
    """Worklist rows cut to the batch command's columns (:data:`reader.RESULT_COLUMNS`)."""
    return [{key: row[key] for key in reader.RESULT_COLUMNS} for row in rows]


def intended_use_notice() -> None:
    st.sidebar.caption(
        "pneumo is a decision aid for pediatric (1-5 years) AP chest X-rays, trained on one "
        "centre's data. It is not a diagnosis. Images are processed in memory on this server "
        "and are never stored or sent anywhere"
        + ("; results go to the PACS only when a user sends them." if pacs_configured() else ".")
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


# --- sign-in, audit trail and the department's default threshold (pneumo.app.access, pneumo.audit)

_AUDIT_ERROR_KEY = "audit_error"  # a record a callback could not write: said on the next run


def forget_session() -> None:
    """Sign-out (or an expired sign-in): the session's readings and threshold are forgotten."""
    for key in (READINGS_KEY, CORRECTED_KEY, SHOWN_KEY, IN_BOX_KEY, THRESHOLD_KEY, _SITE_KEY):
        st.session_state.pop(key, None)
    for key in [k for k in st.session_state if str(k).startswith("pacs_")]:  # PACS_KEY, the
        del st.session_state[key]  # From PACS page's search (patient names), choices, results


def is_admin() -> bool:
    """Site calibration, the department's threshold and the audit page are an administrator's
    (everyone's on a laptop without sign-in)."""
    return access.current().is_admin


def require_admin() -> None:
    """First line after :func:`page_setup` on an administrator's page."""
    if not is_admin():
        st.error("This page is for pneumo administrators.", icon=":material/block:")
        st.stop()


@st.cache_resource(show_spinner=False)
def _audit_store(url: str) -> audit.AuditStore:
    return audit.AuditStore(url)  # makes the tables (metadata.create_all) once per server


def audit_settings() -> audit.AuditSettings:
    section = access.secrets().get("audit", {})
    if not isinstance(section, dict):
        raise audit.AuditError("[audit] in .streamlit/secrets.toml must be a table "
                               "(url = ..., retention_days = ...).")
    return audit.load_settings(section)


def audit_store() -> audit.AuditStore:
    """The server's audit store; a wrong or unreachable audit database stops the run with one
    sentence (pneumo shows nothing it cannot record)."""
    try:
        return _audit_store(audit_settings().url)
    except audit.AuditError as err:
        st.error(f"**pneumo cannot start.** {err} See README, \"Sign-in and audit\".",
                 icon=":material/error:")
        st.stop()


def record_readings(readings: list[Reading], action: str = audit.READING) -> None:
    """One audit record per reading, at the threshold in force; stops the run when the records
    cannot be written (the readings are then not shown)."""
    if not readings:
        return
    try:
        audit_store().record_readings(access.current().actor, readings, current_threshold(), action)
    except audit.AuditError as err:
        st.error(f"{err} The readings are not shown: pneumo shows nothing it could not record.",
                 icon=":material/error:")
        st.stop()


def shown_anyway(reading: Reading, toggle_key: str) -> None:
    """Callback of "Show the reading anyway": one record when it is turned on."""
    if not st.session_state.get(toggle_key):
        return
    try:
        audit_store().record_readings(access.current().actor, [reading], current_threshold(),
                                      audit.READING_SHOWN_ANYWAY)
    except audit.AuditError as err:
        st.session_state[toggle_key] = False
        st.session_state[_AUDIT_ERROR_KEY] = f"{err} The reading was not shown."


def audit_error_notice() -> None:
    found = st.session_state.pop(_AUDIT_ERROR_KEY, None)
    if found:
        st.error(found, icon=":material/error:")


def _calibration_key() -> list | None:
    cal = active_site()
    return None if cal is None else [cal.site, cal.created, cal.scale, cal.bias]


@st.cache_data(ttl=10, show_spinner=False)
def _department_setting(url: str):
    return audit_store().setting(audit.DEFAULT_THRESHOLD_KEY)


def department_threshold() -> float | None:
    """The department's default threshold (the audit database's settings, so every replica reads
    it; re-read every 10 s at most), or None when none is set, or it was set under another
    calibration than the one in use (its probability scale is then another)."""
    value = _department_setting(audit_settings().url)
    if not isinstance(value, dict) or value.get("calibration") != _calibration_key():
        return None
    return float(value["threshold"])


def set_department_threshold(value: float | None) -> None:
    """An administrator's change (``None``: back to the recommended one), recorded with the old
    and new values."""
    new = None if value is None else {"threshold": round(float(value), 3),
                                      "calibration": _calibration_key()}
    audit_store().change_setting(access.current().actor, audit.DEFAULT_THRESHOLD_KEY, new,
                                 audit.DEFAULT_THRESHOLD)
    _department_setting.clear()


def department_threshold_control() -> None:
    """The explorer's administrator section: make the slider's value the department's default."""
    if not is_admin():
        return
    st.subheader("The department's default threshold")
    department = department_threshold()
    threshold = current_threshold()
    st.caption(
        "Every user's slider starts at it when they open pneumo (theirs stays their own for the "
        "session). "
        + ("None is set: it starts at the recommended threshold "
           f"({recommended_threshold():.3f})." if department is None
           else f"Now {department:.3f}."))
    left, right = st.columns(2)
    if left.button(f"Make {threshold:.3f} the department's default", key="department_set",
                   disabled=department is not None and abs(department - threshold) < 5e-4,
                   icon=":material/save:"):
        try:
            set_department_threshold(threshold)
        except audit.AuditError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.success(f"The department's default threshold is now {threshold:.3f}.",
                   icon=":material/check_circle:")
    if department is not None and right.button("Back to the recommended threshold",
                                               key="department_clear", icon=":material/undo:"):
        try:
            set_department_threshold(None)
        except audit.AuditError as err:
            st.error(str(err), icon=":material/error:")
            return
        st.rerun()


def record_site_change(old, new) -> None:
    """One audit record of a site calibration written or removed (its numbers, no image)."""
    try:
        audit_store().record(access.current().actor, audit.SITE_CALIBRATION,
                             old=audit.site_summary(old), new=audit.site_summary(new))
    except audit.AuditError as err:
        st.session_state[_AUDIT_ERROR_KEY] = f"{err} (The site calibration change was made.)"
