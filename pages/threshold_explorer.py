"""Threshold explorer: choose the decision threshold with the test-set evidence in view."""

import numpy as np
import streamlit as st

from pneumo.app import charts, ui
from pneumo.evaluation import metrics as m

ui.page_setup()  # a page opened directly still gets the app's navigation and sidebar
st.title("Threshold explorer")
ui.site_banner()  # which calibration is in use (a site's, or the bundled one)
st.caption("Every chart follows the threshold in the sidebar. Moving it trades missed pneumonia "
           "(false negatives) against false alarms (false positives). " + ui.presets_origin())

presets = ui.thresholds()
with st.container(horizontal=True, vertical_alignment="center"):
    st.markdown("**Presets**", width="content")
    for label, value in presets.items():
        st.button(label, on_click=ui.set_threshold, args=(value,), width="content",
                  key=f"preset-{label}")

ui.department_threshold_control()  # administrators: the slider's start for every user

source = st.radio("Evidence", ui.evidence_options(), horizontal=True, key="evidence_split")
data = ui.evidence(source)
if data is None:
    st.error("No predictions found in weights/. Run `python -m pneumo.evaluate --data PATH`.")
    st.stop()
if data["note"]:
    st.caption(data["note"])

threshold = ui.current_threshold()
y, p = data["label"], data["probability"]
counts = m.confusion(y, p, threshold)
at = m.rates(counts)

labels = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity",
          "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1"}
for col, (key, label) in zip(st.columns(6), labels.items()):
    col.metric(label, f"{at[key]:.1%}")
st.caption(f"At threshold {threshold:.3f}: {counts['fn']} of {counts['fn'] + counts['tp']} "
           f"pneumonia images missed, {counts['fp']} of {counts['fp'] + counts['tn']} normal "
           "images falsely flagged.")

sample_share = float(np.mean(y)) if len(y) else 0.5
left, middle, right = st.columns([1.3, 1, 1])
with left:
    prevalence = ui.prevalence_input(sample_share)
    st.caption(f"PPV and NPV above are at this sample's share of pneumonia ({sample_share:.0%}). "
               "Among the films a department reads the share is often far lower (5-20 %), and "
               "the PPV with it.")
ppv, npv = charts.predictive_values(at["sensitivity"], at["specificity"], prevalence)
middle.metric(f"PPV at {prevalence:.1%} prevalence", "-" if np.isnan(ppv) else f"{ppv:.1%}",
              help="Of the films flagged PNEUMONIA, the share that has pneumonia.")
right.metric(f"NPV at {prevalence:.1%} prevalence", "-" if np.isnan(npv) else f"{npv:.1%}",
             help="Of the films called NORMAL, the share without pneumonia.")
st.caption("From this threshold's sensitivity and specificity on the evidence above, by Bayes' "
           "rule; they assume films like the sample's, only in another proportion.")

left, right = st.columns([1.6, 1])
left.plotly_chart(charts.recall_vs_threshold(y, p, threshold, at), width="stretch")
right.plotly_chart(charts.recall_bars(at, threshold), width="stretch")

left, right = st.columns(2)
left.plotly_chart(charts.confusion_matrix(counts), width="stretch")
right.plotly_chart(charts.probability_histogram(y, p, threshold), width="stretch")

left, right = st.columns(2)
left.plotly_chart(charts.roc(y, p, threshold, at), width="stretch")
right.plotly_chart(charts.precision_recall(y, p, threshold, at), width="stretch")

if data["subtype"] is not None:  # the site sample has no subtypes
    subtypes = {s: p[(data["subtype"] == s)] for s in ("bacteria", "virus")
                if np.any(data["subtype"] == s)}
    left, _ = st.columns(2)
    left.plotly_chart(charts.subtype_recall(subtypes, threshold), width="stretch")
