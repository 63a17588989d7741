"""Model card: what the model is for, how it was trained, how well it does, how sure it is."""

import streamlit as st

from pneumo import charts, config, ui

st.title("Model card")

st.subheader("Intended use and limits")
st.markdown(
    "- **Use**: a second reader that flags possible pneumonia on **pediatric (1-5 years) "
    "anterior-posterior chest radiographs**, and shows where the model looked. An aid to a "
    "clinician, **not a diagnosis**.\n"
    "- **Data**: one centre (Guangzhou Women and Children's Medical Center), one population, "
    "one era of equipment. Performance on adults, lateral views, other hospitals or scanners "
    "is unknown and probably worse.\n"
    "- **Labels**: NORMAL vs PNEUMONIA (bacterial or viral) as graded by physicians; no other "
    "findings (effusion, cardiomegaly, tubes, COVID-19...) are recognised.\n"
    "- **Heat maps** show which regions raised the pneumonia score. They are not a segmentation "
    "of the lesion and can highlight irrelevant structures.\n"
    "- Images that do not look like chest X-rays are flagged, and their probability greyed out."
)

training = ui.json_file(config.TRAINING_FILE)
metrics = ui.json_file(config.METRICS_FILE)

st.subheader("Test-set performance (official split, 624 images)")
if metrics:
    t = metrics["test"]["at_recommended"]
    names = {"auc": "AUC", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
             "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "f1": "F1"}
    rows = [{"Model": "pneumo (this model)",
             **{label: f"{t[k]['value']:.3f} [{t[k]['ci95'][0]:.3f}, {t[k]['ci95'][1]:.3f}]"
                for k, label in names.items()}}]
    for ref in config.PUBLISHED_REFERENCE:
        rows.append({"Model": ref["source"], **{
            label: "-" if ref.get(k) is None else f"{ref[k]:.3f}" for k, label in names.items()}})
    st.table(rows)
    st.caption(f"pneumo at its recommended threshold {metrics['thresholds']['recommended']:.3f} "
               "(chosen on validation); 95 % bootstrap intervals in brackets. Expected "
               f"calibration error on test: {metrics['test']['ece']:.3f}.")
else:
    st.warning("weights/metrics.json is missing: run `python -m pneumo.evaluate --data PATH`.")

left, right = st.columns(2)
test = ui.predictions("test")
if test is not None:
    left.plotly_chart(charts.reliability_diagram(test["label"], test["probability"],
                                                 config.CALIBRATION_BINS), width="stretch")
if training:
    right.plotly_chart(charts.class_balance(training["splits"]), width="stretch")

st.subheader("Training")
hist = ui.history()
if hist:
    left, right = st.columns(2)
    left.plotly_chart(charts.training_curves(hist, "loss"), width="stretch")
    right.plotly_chart(charts.training_curves(hist, "auc"), width="stretch")
if training:
    model_file = config.weights_path(config.MODEL_FILE)
    size_mb = model_file.stat().st_size / 1e6 if model_file.exists() else float("nan")
    st.markdown(
        f"- **Architecture**: {training['model']}; input 224x224 RGB, whole image stretched.\n"
        f"- **Split**: validation carved from official train by patient "
        f"({training['patients']['val']} patients), none shared with training; the official "
        "16-image val split is not used.\n"
        f"- **Frozen-feature baseline** (head only) validation AUC "
        f"{training['head_only_val_auc']:.4f}; fine-tuned best validation AUC "
        f"{training['best_val_auc']:.4f} at epoch {training['best_epoch']}.\n"
        f"- **Calibration**: Platt scaling fitted on validation "
        f"(scale {training['calibration']['scale']:.3f}, bias {training['calibration']['bias']:.3f}).\n"
        f"- **Model file**: {size_mb:.1f} MB; trained in {training['duration_minutes']} minutes "
        "on a 2-core CPU.\n"
        f"- **Versions**: " + ", ".join(f"{k} {v}" for k, v in training["versions"].items()) + "\n"
        f"- **Data fingerprint** (sha256): `{training['data_fingerprint'][:16]}...`"
    )
else:
    st.warning("weights/training.json is missing: train with `python -m pneumo.train`.")
