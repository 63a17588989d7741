"""Read X-rays: upload, probability, decision at the shared threshold, Grad-CAM overlay."""

from dataclasses import replace

import streamlit as st

from pneumo import reader, ui
from pneumo.explain import METHODS, colour_scale, overlay
from pneumo.images import SUPPORTED_EXTENSIONS

READINGS_KEY = "readings"  # digest -> Reading, for the files currently uploaded

st.title("Read X-rays")
st.caption("Drop one or more chest X-rays. Each gets a calibrated probability of pneumonia, the "
           "decision at the department's threshold, and a heat map of where the model looked.")

uploads = st.file_uploader(
    "Chest X-rays (PNG, JPEG, DICOM)", type=[e.lstrip(".") for e in SUPPORTED_EXTENSIONS],
    accept_multiple_files=True,
    help="Files are read in memory and forgotten when you remove them or close the page.",
)
threshold = ui.current_threshold()

cache: dict = st.session_state.setdefault(READINGS_KEY, {})
files = [(u.name, u.getvalue()) for u in uploads or []]
digests = [reader.digest_of(data) for _, data in files]
new = [(f, d) for f, d in zip(files, digests) if d not in cache]
if new:
    with st.status(f"Reading {len(new)} image(s)...", expanded=False) as status:
        bar = st.progress(0.0)
        results = reader.read_batch(
            [f for f, _ in new], ui.explainer(), ood_check=ui.ood_detector(),
            progress=lambda frac, text: bar.progress(min(frac, 1.0), text=text))
        for reading in results:
            cache[reading.digest] = reading
        status.update(label=f"Read {len(new)} image(s)", state="complete")
# forget what is no longer uploaded
for digest in [d for d in cache if d not in digests]:
    del cache[digest]
# one card per upload, even when the same bytes come twice under different names
readings = [cache[d] if cache[d].name == name else replace(cache[d], name=name)
            for (name, _), d in zip(files, digests)]

if not readings:
    st.info("No images yet. Drag chest X-rays onto the box above, or click *Upload*.")
    st.stop()

controls = st.columns([1.2, 1.2, 2])
method = controls[0].radio("Heat map", METHODS, horizontal=True, key="cam_method",
                           help="Grad-CAM++ often spreads attention over several regions.")
opacity = controls[1].slider("Heat-map opacity", 0.0, 1.0, 0.6, 0.05, key="cam_opacity")
with controls[2]:
    st.image(colour_scale(320, 14), width=320,
             caption="Heat-map colours: clear or blue = little influence on the pneumonia "
                     "score, red = most influence")

errors = [r for r in readings if r.error]
for r in errors:
    st.error(f"**{r.name}** was not read: {r.error}", icon=":material/error:")

good = sorted((r for r in readings if r.ok), key=lambda r: r.probability, reverse=True)
if len(readings) > 1:
    st.subheader("Worklist")
    rows = reader.worklist_rows(readings, threshold)
    st.dataframe(
        rows, hide_index=True, width="stretch",
        column_config={
            "file": "File",
            "probability_pneumonia": st.column_config.ProgressColumn(
                "P(pneumonia)", format="percent", min_value=0.0, max_value=1.0),
            "decision": "Decision", "threshold": "Threshold", "warning": "Warnings",
        },
    )
    st.download_button("Download worklist (CSV)", ui.rows_to_csv(rows), "pneumo_worklist.csv",
                       "text/csv", on_click="ignore", icon=":material/download:")

for r in good:
    decision = reader.decide(r.probability, threshold)
    muted = r.ood_warning is not None
    with st.container(border=True):
        st.markdown(f"#### {r.name}")
        left, middle, right = st.columns([1, 1, 1.1])
        left.image(r.display, caption="Original", width="stretch")
        blended = overlay(r.display, r.cams[method], opacity)
        middle.image(blended, caption=f"{method} overlay", width="stretch")
        with right:
            st.metric("Probability of pneumonia", f"{r.probability:.1%}")
            st.markdown(ui.decision_badge(decision, threshold, muted), unsafe_allow_html=True)
            st.markdown(ui.distance_bar(r.probability, threshold, muted), unsafe_allow_html=True)
            if r.ood_warning:
                st.warning(r.ood_warning, icon=":material/warning:")
            for note in r.notes:
                st.caption(note)
            st.download_button(
                "Download overlay (PNG)", ui.png_bytes_later(blended),
                f"{r.name.rsplit('.', 1)[0]}_{method.replace('+', 'p').lower()}.png", "image/png",
                key=f"png-{r.digest}-{r.name}", on_click="ignore", icon=":material/download:")
