"""Read X-rays: upload, probability, decision at the shared threshold, Grad-CAM overlay."""

import time

import streamlit as st

from pneumo import config
from pneumo.app import ui
from pneumo.io.images import SUPPORTED_EXTENSIONS
from pneumo.models import quality, serving
from pneumo.models.explain import METHODS, colour_scale
from pneumo.reading import reader, trust, wording

run_started = time.monotonic()  # the load test's server-side clock (serving.log_reading)
ui.page_setup()  # a page opened directly still gets the app's navigation and sidebar
st.title("Read X-rays")
ui.site_banner()  # which calibration is in use (a site's, or the bundled one)
st.caption("Drop one or more chest X-rays. Each gets a calibrated probability of pneumonia, the "
           "decision at the department's threshold, and a heat map of where the model looked.")

uploads = st.file_uploader(
    ui.upload_label(), type=[e.lstrip(".") for e in SUPPORTED_EXTENSIONS],
    accept_multiple_files=True,
    help="Files are read in memory. Their readings stay while you visit the other pages and are "
         "forgotten when you remove the file here, forget them below, or close the page.",
)
threshold = ui.current_threshold()
segmenter = ui.segmenter()  # None without weights/lungs.keras: the lung features stay hidden
checker = ui.quality_checker()  # without weights/quality.keras: low resolution only
if not checker.available and checker.notice:
    st.caption(checker.notice)

readings = ui.read_uploads(  # one card per reading; site-calibrated when a site file is in use
    uploads, segmenter, checker,
    on_read=lambda n: serving.log_reading(st.session_state, n, run_started),  # load tests only
    box_is_new=ui.arrived_from_another_page())

if not readings:
    st.info("No images yet. Drag chest X-rays onto the box above, or click *Upload*.")
    st.stop()

kept = ui.kept_outside_the_box()
from_pacs = len(ui.pacs_readings())  # read on the From PACS page, named by patient and study
if kept or from_pacs:
    left, right = st.columns([4, 1], vertical_alignment="center")
    files = "its file is" if kept == 1 else "their files are"
    left.caption(" ".join(
        ([f"{wording.plural(kept, 'reading')} from earlier in this session: {files} no "
          "longer in the upload box (it empties when you visit another page)."] if kept else [])
        + ([f"{wording.plural(from_pacs, 'reading')} of images from the PACS (From PACS page), "
            "named by patient and study date."] if from_pacs else [])))
    right.button("Forget these readings", on_click=ui.forget_readings, key="forget_readings",
                 icon=":material/delete:")

ui.card_styles()
controls = st.columns([1.1, 1.1, 1.3, 1.8])
method = controls[0].radio("Heat map", METHODS, horizontal=True, key="cam_method",
                           help="Grad-CAM++ often spreads attention over several regions.")
opacity = controls[1].slider("Heat-map opacity", 0.0, 1.0, 0.6, 0.05, key="cam_opacity")
outline = segmenter is not None and controls[2].toggle(
    "Show lung outline", key="lung_outline",
    help="Draws the lung fields found by pneumo's lung segmenter in magenta.")
with controls[3].container(key="colour-scale"):
    st.image(colour_scale(320, 14), width="stretch",
             caption="Heat-map colours are relative to each image: red = where the model looked "
                     "most in this image, clear or blue = least. They do not say how likely "
                     "pneumonia is (the probability does), nor outline an opacity: the model "
                     "card says how much they vary. Below the threshold the heat map is "
                     "hidden unless asked for, then drawn faint.")

errors = [r for r in readings if r.error]
for r in errors:
    st.error(f"**{r.name}** was not read: {r.error}", icon=":material/error:")

ui.read_requested_corrections(readings, segmenter)  # the correction buttons' requests, in order
current = ui.current_readings(readings)  # a corrected copy's reading replaces the file's own
rows = reader.worklist_rows(current, threshold, ui.site_name())  # flagged first, then by probability
if len(readings) > 1:
    st.subheader("Worklist")
    flagged = sum(row["flagged"] for row in rows)
    only = st.toggle(f"Flagged only ({flagged})", key="flagged_only", disabled=not flagged,
                     help="Doubtful (turned, flipped or inverted as uploaded), the ensemble's "
                          "models split 3-2 (right about half the time on such films), out of "
                          "scope (not a chest X-ray of the population pneumo was validated on) "
                          "or not read.")
    table, columns = ui.kept_worklist_table(rows, current, only)  # kept per rows
    st.dataframe(table, hide_index=True, width="stretch", column_config=columns,
                 column_order=list(columns), height=ui.worklist_height(len(table.data)),
                 placeholder=ui.NO_VALUE)  # a withheld or missing probability, not "None"
    st.caption("Flagged films come first; a click on a column header sorts by it. A corrected "
               "copy's reading replaces the file's own once it has been asked for. The CSV has "
               "the batch command's columns (`python -m pneumo.predict`).")
    lines = [ui.flagged_line(row, current[row["index"]]) for row in rows
             if row["flagged"] and row["trust"] != trust.NOT_READ]  # errors are listed above
    if lines:
        st.markdown("**Flagged** (the link opens the card)\n" + "\n".join(lines))
    st.markdown(ui.card_links(rows, current))
    st.download_button("Download worklist (CSV)", ui.rows_to_csv(ui.csv_rows(rows)),
                       "pneumo_worklist.csv", "text/csv", on_click="ignore",
                       icon=":material/download:")


def show_reading(r: reader.Reading, key: str) -> None:
    """Images, probability, decision and warnings of one reading (as uploaded or corrected)."""
    verdict = r.trust
    if verdict.state == trust.OUT_OF_SCOPE:
        st.error(verdict.reason, icon=":material/block:")
        if verdict.code != trust.NOT_XRAY and r.quality is not None:  # e.g. lungs not found in
            for code, message in r.quality.findings:  # a turned film: say it is turned
                if code != quality.LOW_RESOLUTION:
                    st.warning(message, icon=":material/screen_rotation:")
        if not st.toggle("Show the reading anyway", key=f"anyway-{key}",
                         on_change=ui.shown_anyway, args=(r, f"anyway-{key}"),  # audit record
                         help="Shows the probability and heat map greyed: pneumo was not "
                              "validated on images like this one."):
            with st.container(key=f"{ui.MUTED_CARD}-{key}-hidden"):
                left, _ = st.columns([1, 2.1])
                drawn.add(f"{key}-hidden")
                left.image(ui.kept_jpeg(f"{key}-hidden", "original", (r.digest,), lambda: r.display),
                           caption="As uploaded: no reading shown", width="stretch",
                           output_format="JPEG")
            return
        st.markdown(f"**Reading {ui.OUTSIDE_POPULATION}**: not validated on images like this "
                    "one; do not act on it.")
    label, muted = ui.card_decision(r, threshold)
    if not muted:  # no container of its own: it would only hold the columns (one block less)
        _reading_body(r, key, label, muted)
        return
    with st.container(key=f"{ui.MUTED_CARD}-{key}"):  # greyed by ui.card_styles' CSS
        _reading_body(r, key, label, muted)


def _reading_body(r: reader.Reading, key: str, label: str, muted: bool) -> None:
    out_of_scope = r.trust.state == trust.OUT_OF_SCOPE
    at_or_above = reader.decide(r.probability, threshold) == config.CLASS_NAMES[1]
    left, middle, right = st.columns([1, 1, 1.1])
    show = at_or_above or middle.toggle(
        "Show heat map", key=f"show-cam-{key}",
        help="Below the threshold the heat map is hidden: its colours are relative to this "
             "image and would look as strong as on a clear pneumonia.")
    view = ui.card_pictures(r, key, method, opacity, threshold, show, outline)  # kept per look
    drawn.add(key)
    left.image(view.original, caption="Corrected by pneumo" if r.corrected_from else "Original",
               width="stretch", output_format="JPEG")
    if view.overlay is None:
        middle.info("Heat map hidden: the probability is below the threshold.",
                    icon=":material/visibility_off:")
    else:
        middle.image(view.overlay, caption=view.caption, width="stretch", output_format="JPEG")
        empty = ui.empty_heat_map(r, method)
        if empty:
            middle.info(empty, icon=":material/check_circle:")
    with right:
        st.metric("Probability of pneumonia", wording.probability_text(r.probability))
        site_note = ui.site_note(r, threshold)
        if site_note:
            st.caption(site_note)
        for line in ui.evidence_lines(r.probability):
            st.caption(line)
        st.markdown(ui.decision_badge(label, threshold, muted), unsafe_allow_html=True)
        st.markdown(ui.distance_bar(r.probability, threshold, muted), unsafe_allow_html=True)
        disagreement = wording.disagreement_text(r.vote(threshold))  # an ensemble's models
        if disagreement:
            st.warning(disagreement, icon=":material/how_to_vote:")
        if not out_of_scope:  # the reason is above the card; other findings would mislead
            for code, message in r.quality.findings if r.quality is not None else []:
                st.warning(message, icon=":material/photo_size_select_small:"
                           if code == quality.LOW_RESOLUTION else ":material/screen_rotation:")
            if r.lung_warning:
                st.warning(r.lung_warning, icon=":material/pulmonology:")
        share_line, caution = ui.lung_lines(r, method, threshold)
        if view.overlay is not None and share_line:
            st.markdown(share_line)
            if caution:
                st.warning(caution, icon=":material/warning:")
        for note in r.notes[1:] if r.corrected_from else r.notes:
            st.caption(note)
        if view.overlay is not None:
            suffix = "_corrected" if r.corrected_from else ""
            st.download_button(
                "Download overlay (PNG)", view.overlay_png,
                f"{r.name.rsplit('.', 1)[0]}{suffix}_{method.replace('+', 'p').lower()}.png",
                "image/png", key=f"png-{key}", on_click="ignore", icon=":material/download:")


drawn: set[str] = set()  # the cards whose pictures this run drew (ui.card_pictures keeps them)
for row in rows:
    r = readings[row["index"]]
    if not r.ok:
        continue
    key = ui.card_key(r)
    with st.container(border=True):
        st.subheader(r.name, anchor=ui.card_anchor(r), divider=False)
        show_reading(r, key)
        if (r.quality is None or r.quality.corrected is None
                or r.trust.code == trust.NOT_XRAY):  # nothing to turn back in a photo
            continue
        fixed = ui.corrected_reading(r)
        if fixed is None:
            codes = r.quality.codes
            st.button(quality.correction_label(codes), key=f"correct-{key}",
                      icon=":material/rotate_right:", type="primary",
                      on_click=ui.request_correction, args=(r.digest,),  # kept across reruns
                      help="Reads a copy of the image that pneumo turned or inverted back; "
                           "the file itself is not changed.")
        else:
            st.markdown("##### Reading of the corrected image")
            st.info(fixed.notes[0], icon=":material/auto_fix_high:")
            st.caption(quality.CHECK_CORRECTED)
            show_reading(fixed, f"{key}-corrected")
ui.forget_pictures_except(drawn)
