"""Model card: what the model is for, how it was trained, how well it does, how sure it is."""

import streamlit as st

from pneumo import config
from pneumo.app import charts, ui
from pneumo.reading import site, wording

ui.page_setup()  # a page opened directly still gets the app's navigation and sidebar
st.title("Model card")
ui.site_banner()  # which calibration is in use (a site's, or the bundled one)

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
    "of the lesion and can highlight irrelevant structures; the table below says how often "
    "they fall on the lungs.\n"
    "- Images that do not look like chest X-rays, or look out of the intended population (older "
    "children and adults, other views or body parts from the DICOM header), get no reading "
    "unless asked for, then greyed; turned, flipped or inverted films are greyed as doubtful "
    "with a corrected reading offered."
)

training = ui.training()
metrics = ui.metrics()

st.subheader("Who pneumo answers about")
population = ui.population_record()
scope_figures = metrics.raw.get("scope") if metrics else None
lines = ["- **Intended population**: children aged 1-5 years, frontal (PA or AP) chest X-rays. A "
         "DICOM header stating another age, a lateral, oblique or decubitus view, another body "
         "part or another modality puts an image out of scope; its age decides over the pixels."]
if population:
    cv = population["cross_validation"]
    lines.append(
        "- **From the pixels**, when no age is stated: a check fitted on this model's features "
        "(Kermany training children against NIH ChestX-ray14 patients aged 7-85) calls "
        f"{cv['older_18+_originals']['flagged']:.1%} of held-out adults and "
        f"{cv['older_10-17_originals']['flagged']:.1%} of held-out 10-17-year-olds older than "
        f"the population, and {cv['children_val_originals']['flagged']:.1%} of held-out children "
        "from the training population (patient-grouped cross-validation). Adults from another "
        "hospital are caught less often (docs/scope.md gives the measured share): the check "
        "learnt 'older' from one hospital's films.")
if scope_figures:
    share = scope_figures["share"]
    t = scope_figures["trusted"]
    lines.append(
        f"- **On the official test set**: {share['out_of_scope']:.1%} of the children were put "
        f"out of scope; on the {t['n']} others the figures are AUC {t['auc']:.3f}, accuracy "
        f"{t['accuracy']:.3f}, sensitivity {t['sensitivity']:.3f}, specificity "
        f"{t['specificity']:.3f}.")
lines.append("- **Not caught reliably**: lateral views without a DICOM header saying so, and a "
             "film cut to one lung. The full table: docs/scope.md in the project.")
st.markdown("\n".join(lines))

st.subheader("Test-set performance (official split, 624 images)")
if metrics:
    t = metrics.test_at_recommended
    names = {"auc": "AUC", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
             "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "f1": "F1"}
    rows = [{"Model": "pneumo (this model)",
             **{label: f"{t[k].value:.3f} [{t[k].ci95[0]:.3f}, {t[k].ci95[1]:.3f}]"
                for k, label in names.items()}}]
    for ref in config.PUBLISHED_REFERENCE:
        rows.append({"Model": ref["source"], **{
            label: "n/a" if ref.get(k) is None else f"{ref[k]:.3f}" for k, label in names.items()}})
    st.table(rows)
    st.caption(f"pneumo at its recommended threshold {metrics.thresholds.recommended_shown:.3f} "
               "(chosen on validation); 95 % bootstrap intervals in brackets. Expected "
               f"calibration error on test: {metrics.test_ece:.3f}.")
else:
    st.warning("weights/metrics.json is missing: run `python -m pneumo.evaluate --data PATH`.")

local = ui.active_site()
st.subheader("Calibration: validation, test" + (" and this site" if local else ""))
columns = st.columns(3 if local else 2)
for column, split in zip(columns, ("val", "test")):
    predictions = ui.predictions(split)
    if predictions is not None:
        column.plotly_chart(charts.reliability_diagram(
            predictions.label, predictions.probability, config.CALIBRATION_BINS,
            split="validation" if split == "val" else "official test"), width="stretch")
st.caption(
    "Why a film's card can show two numbers that differ: the headline probability is calibrated on "
    "the validation split (carved from the official training images), and the evidence line under "
    "it counts what happened on the official test set, whose normal films are known to be "
    "harder (specificity on test is lower than on validation). Where the two differ by more than "
    "15 points "
    "the card says the estimate runs high (or low) in that range. Nothing is refitted on the test "
    "set, which would make its figures meaningless; the remedy is a site calibration on the "
    "department's own labelled films.")
if local:
    columns[2].plotly_chart(charts.reliability_diagram(
        *local.sample(), config.CALIBRATION_BINS, split=f"{local.site}, site-calibrated"),
        width="stretch")
    st.caption(site.model_card_note(local))
if ui.site_calibration_enabled() and ui.is_admin():  # an administrator's (issue #24)
    ui.site_calibration_section()

st.subheader("Do the heat maps sit on the lungs, and follow the film?")
heatmaps = metrics.heatmaps if metrics else {}
if heatmaps:
    sources = {"ground_truth_masks": "drawn lung masks of the test images",
               "segmenter_masks": "masks from pneumo's lung-field segmenter"}
    rows = []
    for source, report in heatmaps.items():
        for method in ("Grad-CAM", "Grad-CAM++"):
            for name, r in report.get(method, {}).items():
                rows.append({"Masks": sources.get(source, source), "Method": method, "Class": name,
                             "Images": r["n"], "Heat-map mass in the lungs": f"{r['mass_in_lungs']:.1%}",
                             "Peak in the lungs": wording.share_of(r["peak_in_lungs"], r["n"]),
                             "No positive map": f"{r.get('empty_maps', 0):.1%}",
                             "Lungs' share of the image": f"{report['lung_area'].get(name, 0):.1%}"})
    st.table(rows)
    st.caption("Official test images. A map spread evenly over the image would put about the "
               "lungs' share of the image inside them. 'No positive map': nothing in the image "
               "raised the pneumonia score (common on NORMAL images); such a map has no peak.")
    if follow := wording.heatmap_follow_text(heatmaps.get("follow_the_film", {})):
        st.markdown(follow)
else:
    st.info("No heat-map figures yet: run `python -m pneumo.evaluate --data PATH`.")

st.subheader("Training")
hist = ui.history()  # None for an ensemble: its members each have their own
left, right = st.columns(2)
if hist:
    left.plotly_chart(charts.training_curves(hist, "loss"), width="stretch")
    right.plotly_chart(charts.training_curves(hist, "auc"), width="stretch")
    if hist.get("val_outside") and any(v is not None for v in hist["val_outside"]):
        left.plotly_chart(charts.training_curves(hist, "outside"), width="stretch")
if training:
    (right if hist else left).plotly_chart(charts.class_balance(training.splits), width="stretch")
if training:
    model_file = config.weights_path(config.MODEL_FILE)
    size_mb = model_file.stat().st_size / 1e6 if model_file.exists() else float("nan")
    st.markdown(
        f"- **Architecture**: {training.model}; input 224x224 RGB, whole image stretched.\n"
        + wording.ensemble_card_lines(training.members) +
        f"- **Split**: validation carved from official train by patient "
        f"({training.patients['val']} patients), none shared with training; the official "
        "16-image val split is not used.\n"
        f"- **Frozen-feature baseline** (head only) validation AUC "
        f"{training.head_only_val_auc:.4f}; fine-tuned: best validation log loss "
        f"{training.best_val_loss or float('nan'):.4f} (AUC {training.best_val_auc or float('nan'):.4f})"
        + (f" at epoch {training.best_epoch}; kept: {training.kept}.\n" if not training.members
           else " (the members' mean logit, before calibration).\n") +
        f"- **Training against shortcuts**: {training.augmentation}; "
        f"penalty on heat-map mass outside the lungs, weight {training.lung_penalty:g}.\n"
        f"- **Calibration**: Platt scaling fitted on {training.calibration.fitted_on} "
        f"(scale {training.calibration.scale:.3f}, bias {training.calibration.bias:.3f}).\n"
        f"- **Model file**: {size_mb:.1f} MB; trained in {training.duration_minutes:g} minutes "
        "on a 2-core CPU.\n"
        f"- **Versions**: " + ", ".join(f"{k} {v}" for k, v in training.versions.items()) + "\n"
        f"- **Data fingerprint** (sha256): `{training.data_fingerprint[:16]}...`"
    )
else:
    st.warning("weights/training.json is missing: train with `python -m pneumo.train`.")

lungs = ui.lung_record()
if lungs:
    d = lungs["dice"]
    st.markdown(
        f"- **Lung-field segmenter**: {lungs['model']}, {lungs['parameters']:,} weights, "
        f"{lungs['seconds_per_image'] * 1000:.0f} ms per image. Fitted on {len(lungs['fit_ids'])} "
        f"pairs (pediatric train and CC BY adult), checkpoint chosen on {len(lungs['val_ids'])}. "
        "Dice (mean / 5th percentile): "
        + "; ".join(f"{k.replace('_', ' ')} {v['mean']:.3f} / {v['p5']:.3f} (n={v['n']})"
                    for k, v in d.items()))
