"""Read X-rays: upload, probability, decision at the shared threshold, Grad-CAM overlay."""

import time

import streamlit as st

from pneumo import config
from pneumo.app import ui
from pneumo.io.images import SUPPORTED_EXTENSIONS
from pneumo.models import quality, serving
from pneumo.models.explain import METHODS, colour_scale
from pneumo.reading import reader, wording

run_started = time.monotonic()  # the load test's server-side clock (serving.log_reading)
st.title("Read X-rays")
ui.site_banner()  # which calibration is in use (a site's, or the bundled one)
st.caption("Drop one or more chest X-rays. Each gets a calibrated probability of pneumonia, the "
           "decision at the department's threshold, and a heat map of where the model looked.")

uploads = st.file_uploader(
    "Chest X-rays (PNG, JPEG, DICOM)", type=[e.lstrip(".") for e in SUPPORTED_EXTENSIONS],
    accept_multiple_files=True,
    help="Files are read in memory and forgotten when you remove them or close the page.",
)
threshold = ui.current_threshold()
segmenter = ui.segmenter()  # None without weights/lungs.keras: the lung features stay hidden
checker = ui.quality_checker()  # without weights/quality.keras: low resolution only
if not checker.available and checker.notice:
    st.caption(checker.notice)

readings = ui.read_uploads(  # one card per upload; site-calibrated when a site file is in use
    uploads, segmenter, checker,
    on_read=lambda n: serving.log_reading(st.session_state, n, run_started))  # off unless load-testing

if not readings:
    st.info("No images yet. Drag chest X-rays onto the box above, or click *Upload*.")
    st.stop()

controls = st.columns([1.1, 1.1, 1.3, 1.8])
method = controls[0].radio("Heat map", METHODS, horizontal=True, key="cam_method",
                           help="Grad-CAM++ often spreads attention over several regions.")
opacity = controls[1].slider("Heat-map opacity", 0.0, 1.0, 0.6, 0.05, key="cam_opacity")
outline = segmenter is not None and controls[2].toggle(
    "Show lung outline", key="lung_outline",
    help="Draws the lung fields found by pneumo's lung segmenter in magenta.")
with controls[3]:
    st.image(colour_scale(320, 14), width=320,
             caption="Heat-map colours are relative to each image: red = where the model looked "
                     "most in this image, clear or blue = least. They do not say how likely "
                     "pneumonia is; the probability does. Below the threshold the heat map is "
                     "hidden unless asked for, then drawn faint.")

errors = [r for r in readings if r.error]
for r in errors:
    st.error(f"**{r.name}** was not read: {r.error}", icon=":material/error:")

good = sorted((r for r in readings if r.ok), key=lambda r: r.probability, reverse=True)
if len(readings) > 1:
    st.subheader("Worklist")
    rows = reader.worklist_rows(ui.current_readings(readings), threshold, ui.site_name())
    st.dataframe(
        rows, hide_index=True, width="stretch",
        column_order=["file", "probability", "decision", "threshold", "corrected", "warning"],
        column_config={
            "file": "File", "probability": "P(pneumonia)", "decision": "Decision",
            "threshold": "Threshold", "corrected": "Corrected by pneumo", "warning": "Warnings",
        },
    )
    st.caption("A corrected copy's reading replaces the file's own once it has been asked for. "
               "The CSV has the batch command's columns (`python -m pneumo.predict`).")
    st.download_button("Download worklist (CSV)", ui.rows_to_csv(rows), "pneumo_worklist.csv",
                       "text/csv", on_click="ignore", icon=":material/download:")


def show_reading(r: reader.Reading, key: str) -> None:
    """Images, probability, decision and warnings of one reading (as uploaded or corrected)."""
    decision = reader.decide(r.probability, threshold)
    muted = r.unreliable
    left, middle, right = st.columns([1, 1, 1.1])
    show = decision == config.CLASS_NAMES[1] or middle.toggle(
        "Show heat map", key=f"show-cam-{key}",
        help="Below the threshold the heat map is hidden: its colours are relative to this "
             "image and would look as strong as on a clear pneumonia.")
    view = ui.card_images(r, method, opacity, threshold, show, outline)
    left.image(view.original, caption="Corrected by pneumo" if r.corrected_from else "Original",
               width="stretch")
    if view.overlay is None:
        middle.info("Heat map hidden: the probability is below the threshold.",
                    icon=":material/visibility_off:")
    else:
        middle.image(view.overlay, caption=view.caption, width="stretch")
    with right:
        st.metric("Probability of pneumonia", wording.probability_text(r.probability))
        site_note = ui.site_note(r)
        if site_note:
            st.caption(site_note)
        evidence = ui.evidence_line(r.probability)
        if evidence:
            st.caption(evidence)
        st.markdown(ui.decision_badge(decision, threshold, muted), unsafe_allow_html=True)
        st.markdown(ui.distance_bar(r.probability, threshold, muted), unsafe_allow_html=True)
        if r.ood_warning:
            st.warning(r.ood_warning, icon=":material/warning:")
        for code, message in r.quality.findings if r.quality is not None else []:
            st.warning(message, icon=":material/photo_size_select_small:"
                       if code == quality.LOW_RESOLUTION else ":material/screen_rotation:")
        if r.lung_warning:
            st.warning(r.lung_warning, icon=":material/pulmonology:")
        share_line, caution = ui.lung_lines(r, method)
        if view.overlay is not None and share_line:
            st.markdown(share_line)
            if caution:
                st.warning(caution, icon=":material/warning:")
        for note in r.notes[1:] if r.corrected_from else r.notes:
            st.caption(note)
        if view.overlay is not None:
            suffix = "_corrected" if r.corrected_from else ""
            st.download_button(
                "Download overlay (PNG)", ui.png_bytes_later(view.overlay),
                f"{r.name.rsplit('.', 1)[0]}{suffix}_{method.replace('+', 'p').lower()}.png",
                "image/png", key=f"png-{key}", on_click="ignore", icon=":material/download:")


for r in good:
    key = f"{r.digest}-{r.name}"
    with st.container(border=True):
        st.markdown(f"#### {r.name}")
        show_reading(r, key)
        if r.quality is None or r.quality.corrected is None:
            continue
        fixed = ui.corrected_reading(r)
        if fixed is None:
            codes = r.quality.codes
            if st.button(quality.correction_label(codes), key=f"correct-{key}",
                         icon=":material/rotate_right:", type="primary",
                         help="Reads a copy of the image that pneumo turned or inverted back; "
                              "the file itself is not changed."):
                with st.spinner("Reading the corrected image..."):
                    if ui.read_corrected(r, segmenter):
                        st.rerun()  # show it in place of the button
        else:
            st.markdown("##### Reading of the corrected image")
            st.info(fixed.notes[0], icon=":material/auto_fix_high:")
            show_reading(fixed, f"{key}-corrected")
