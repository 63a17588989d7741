"""Evaluation CLI: ``python -m pneumo.evaluate --data PATH [--weights weights/]``.

Predicts calibrated probabilities for the carved validation split and the 624 official test
images, chooses the recommended and high-sensitivity thresholds on validation only (the
highest threshold reaching validation sensitivity 0.95 and 0.98), measures how much of each
heat map lies in the lungs (ground-truth test masks from ``--lung-masks`` when present, and
the lung-field segmenter's masks), and writes ``val_predictions.csv``,
``test_predictions.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.data.splits import Sample, layout_problem, load_arrays, load_splits
from pneumo.evaluation import artifacts
from pneumo.evaluation import metrics as m


def compute_metrics(val: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    samples: int = config.BOOTSTRAP_SAMPLES) -> dict:
    """All reported numbers from validation and test labels/probabilities (and subtypes)."""
    recommended = m.sensitivity_threshold(val["label"], val["probability"],
                                          config.RECOMMENDED_SENSITIVITY_TARGET)
    high_sens = m.sensitivity_threshold(val["label"], val["probability"],
                                        config.HIGH_SENSITIVITY_TARGET)
    y, p = test["label"], test["probability"]
    out = {
        "thresholds": {
            "recommended": recommended,
            "recommended_rule": (f"highest threshold with validation sensitivity >= "
                                 f"{config.RECOMMENDED_SENSITIVITY_TARGET} (adopted after the "
                                 "first model's test results were seen; it used Youden's J)"),
            "high_sensitivity": high_sens,
            "high_sensitivity_rule": (f"highest threshold with validation sensitivity >= "
                                      f"{config.HIGH_SENSITIVITY_TARGET}"),
            "default": config.DEFAULT_THRESHOLD,
        },
        "test": {
            "n": int(len(y)), "n_pneumonia": int(y.sum()), "n_normal": int((1 - y).sum()),
            "at_recommended": m.summary(y, p, recommended, samples),
            "confusion_at_recommended": m.confusion(y, p, recommended),
            "at_high_sensitivity": m.metrics_at(y, p, high_sens),
            "at_0.5": m.metrics_at(y, p, 0.5),
            "ece": m.expected_calibration_error(y, p, config.CALIBRATION_BINS),
            "brier": float(np.mean((p - y) ** 2)),
        },
        "validation": {
            "n": int(len(val["label"])),
            "auc": m.roc_auc(val["label"], val["probability"]),
            "at_recommended": m.metrics_at(val["label"], val["probability"], recommended),
            "ece": m.expected_calibration_error(val["label"], val["probability"],
                                                config.CALIBRATION_BINS),
            "log_loss": m.log_loss(val["label"], val["probability"]),
        },
        "subtype_sensitivity_at_recommended": {},
    }
    for subtype in ("bacteria", "virus"):
        mask = test["subtype"] == subtype
        if mask.any():
            hits = int(np.sum(m.flagged(p[mask], recommended)))
            lo, hi = m.bootstrap_interval(np.ones(mask.sum()), p[mask],
                                          lambda yy, pp: float(np.mean(m.flagged(pp, recommended))), samples)
            out["subtype_sensitivity_at_recommended"][subtype] = {
                "value": hits / int(mask.sum()), "n": int(mask.sum()), "ci95": [lo, hi]}
    return out


def predict_split(model, samples: list[Sample], explainer=None) -> dict[str, np.ndarray]:
    """Calibrated probabilities, pooled features (for the OOD check) and both CAMs, one pass."""
    from pneumo.models.explain import METHODS, CamExplainer

    explainer = explainer or CamExplainer(model)
    images, labels = load_arrays(samples)
    explanations = explainer.explain(images, batch_size=32)
    return {"label": labels.astype(int),
            "probability": np.array([e.probability for e in explanations], dtype="float64"),
            "subtype": np.array([s.subtype for s in samples]),
            "features": np.stack([e.features for e in explanations]) if explanations else None,
            "cams": {k: np.stack([e.cams[k] for e in explanations]) for k in METHODS}
            if explanations else {},
            "filename": np.array([s.filename for s in samples]),
            "images": images}


def heatmap_figures(test: dict, lung_masks: Path | None, lungs_model: Path) -> dict:
    """Heat-map mass and peaks in the lungs on test: with ground-truth masks, and segmenter masks."""
    from pneumo.models.lungs import LungSegmenter, heatmap_report

    out = {}
    if lung_masks is not None and (Path(lung_masks) / "MANIFEST.csv").exists():
        from pneumo.data.lung_masks import masks_by_filename, read_mask

        paths = masks_by_filename(lung_masks, "kermany_test")
        have = np.array([f in paths for f in test["filename"]])
        if have.any():
            masks = np.stack([read_mask(paths[f]) for f in test["filename"][have]])
            cams = {k: v[have] for k, v in test["cams"].items()}
            out["ground_truth_masks"] = heatmap_report(cams, masks, test["label"][have])
    if Path(lungs_model).exists():
        segmenter = LungSegmenter.load(lungs_model)
        fields = segmenter.fields(test["images"])
        masks = np.stack([f.mask for f in fields])
        out["segmenter_masks"] = heatmap_report(test["cams"], masks, test["label"])
        out["segmenter_masks"]["no_lungs_flagged"] = float(np.mean([f.problem is not None
                                                                     for f in fields]))
    return out


def fit_ood(model, train: list[Sample], results: dict, out: Path) -> dict:
    """Fit the OOD check on train features (originals and augmented copies), threshold on val
    (the same); report the test flag rate. ``python -m pneumo.ood --refit`` does only this."""
    from pneumo.models import ood

    train_images, _ = load_arrays(train)
    detector = ood.fit_reference(model, train_images, results["val"]["images"],
                                 val_features=results["val"]["features"])
    detector.save(artifacts.ood_file(out))
    return ood.report(detector, results)


def format_table(metrics: dict) -> str:
    t = metrics["test"]["at_recommended"]
    lines = [f"test set (n={metrics['test']['n']}), threshold "
             f"{metrics['thresholds']['recommended']:.3f} chosen on validation"]
    for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        v = t[name]
        lines.append(f"  {name:<12} {v['value']:.3f}  (95% CI {v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})")
    lines.append(f"  ECE {metrics['test']['ece']:.3f}; high-sensitivity threshold "
                 f"{metrics['thresholds']['high_sensitivity']:.3f}: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in metrics["test"]["at_high_sensitivity"].items()))
    for k, v in metrics["subtype_sensitivity_at_recommended"].items():
        lines.append(f"  sensitivity {k}: {v['value']:.3f} (n={v['n']})")
    for source, report in metrics.get("heatmaps", {}).items():
        lines.append(f"  heat maps vs {source.replace('_', ' ')} (n={report['n']}; lungs cover "
                     + ", ".join(f"{k} {v:.1%}" for k, v in report["lung_area"].items()) + ")")
        for method in ("Grad-CAM", "Grad-CAM++"):
            for name, r in report.get(method, {}).items():
                lines.append(f"    {method:<10} {name:<9} mass in lungs {r['mass_in_lungs']:.1%}, "
                             f"peak in lungs {r['peak_in_lungs']:.1%}, no positive map "
                             f"{r.get('empty_maps', 0):.1%} (n={r['n']})")
    if "ood" in metrics:
        lines.append(f"  OOD check flags {metrics['ood']['test_flagged']:.2%} of test radiographs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.evaluate", description="Evaluate pneumo's model on val and test.")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout chest_xray folder")
    parser.add_argument("--weights", type=Path, default=config.WEIGHTS_DIR,
                        help="folder with pneumo.keras; results are written here")
    parser.add_argument("--bootstrap", type=int, default=config.BOOTSTRAP_SAMPLES)
    parser.add_argument("--lung-masks", type=Path, default=config.SHARED_LUNG_MASKS_DIR,
                        help="lung_masks folder: its test masks measure the heat maps (never fit)")
    parser.add_argument("--lungs", type=Path, default=config.weights_path(config.LUNG_MODEL_FILE),
                        help="lung-field segmenter for the segmenter-mask heat-map figures")
    parser.add_argument("--keep-ood", action="store_true",
                        help="keep ood.npz and its figures instead of refitting them (about 20 "
                             "minutes): they depend on the backbone only, so this is right after a "
                             "calibration-only change (`python -m pneumo.train --recalibrate`)")
    args = parser.parse_args(argv)

    from pneumo.models.classifier import load_model, model_problem
    from pneumo.models.explain import CamExplainer

    if problem := layout_problem(args.data) or model_problem(args.weights / config.MODEL_FILE):
        parser.error(problem)

    model = load_model(args.weights / config.MODEL_FILE)
    explainer = CamExplainer(model)
    splits = load_splits(args.data)
    results = {}
    for split in ("val", "test"):
        results[split] = predict_split(model, splits[split], explainer)
        artifacts.write_predictions(split, splits[split], results[split]["probability"], args.weights)
    metrics = compute_metrics(results["val"], results["test"], args.bootstrap)
    metrics["heatmaps"] = heatmap_figures(results["test"], args.lung_masks, args.lungs)
    previous_ood = artifacts.read_ood_figures(args.weights)
    if args.keep_ood and previous_ood and artifacts.ood_file(args.weights).exists():
        print("kept the OOD reference and its figures (--keep-ood)")
        metrics["ood"] = previous_ood
    else:
        metrics["ood"] = fit_ood(model, splits["train"], results, args.weights)
    artifacts.write_metrics(metrics, args.weights)
    print(format_table(metrics))


if __name__ == "__main__":
    main()
