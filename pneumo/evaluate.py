"""Evaluation CLI: ``python -m pneumo.evaluate --data PATH [--weights weights/]``.

Predicts calibrated probabilities for the carved validation split and the 624 official test
images, chooses the recommended (Youden) and high-sensitivity thresholds on validation only,
and writes ``val_predictions.csv``, ``test_predictions.csv`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo import metrics as m
from pneumo.data import Sample, load_arrays, load_splits

PREDICTION_FIELDS = ["filename", "label", "class_name", "subtype", "patient", "probability"]


def recommended_threshold(metrics: dict | None) -> float:
    """The recommended threshold as the app and the CLIs use it (3 decimals), else 0.5."""
    if not metrics:
        return config.DEFAULT_THRESHOLD
    return round(float(metrics["thresholds"]["recommended"]), 3)


def write_predictions(path: Path, samples: list[Sample], probs: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PREDICTION_FIELDS)
        writer.writeheader()
        for s, p in zip(samples, probs):
            writer.writerow({"filename": s.filename, "label": s.label, "class_name": s.class_name,
                             "subtype": s.subtype, "patient": s.patient,
                             "probability": f"{float(p):.9g}"})


def compute_metrics(val: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    samples: int = config.BOOTSTRAP_SAMPLES) -> dict:
    """All reported numbers from validation and test labels/probabilities (and subtypes)."""
    recommended = m.youden_threshold(val["label"], val["probability"])
    high_sens = m.sensitivity_threshold(val["label"], val["probability"],
                                        config.HIGH_SENSITIVITY_TARGET)
    y, p = test["label"], test["probability"]
    out = {
        "thresholds": {
            "recommended": recommended,
            "recommended_rule": "maximum sensitivity + specificity (Youden) on validation",
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
        },
        "subtype_sensitivity_at_recommended": {},
    }
    for subtype in ("bacteria", "virus"):
        mask = test["subtype"] == subtype
        if mask.any():
            hits = int(np.sum(p[mask] >= recommended))
            lo, hi = m.bootstrap_interval(np.ones(mask.sum()), p[mask],
                                          lambda yy, pp: float(np.mean(pp >= recommended)), samples)
            out["subtype_sensitivity_at_recommended"][subtype] = {
                "value": hits / int(mask.sum()), "n": int(mask.sum()), "ci95": [lo, hi]}
    return out


def predict_split(model, samples: list[Sample]) -> dict[str, np.ndarray]:
    """Calibrated probabilities and pooled features (for the OOD check) in one pass."""
    import keras

    both = keras.Model(model.input, [model.output, model.get_layer("avg_pool").output])
    images, labels = load_arrays(samples)
    probs, features = both.predict(images, batch_size=32, verbose=0)
    return {"label": labels.astype(int), "probability": probs.ravel().astype("float64"),
            "subtype": np.array([s.subtype for s in samples]), "features": features,
            "images": images}


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """A predictions CSV as arrays (label, probability, subtype, filename, class_name)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    return {
        "filename": np.array([r["filename"] for r in rows]),
        "label": np.array([int(r["label"]) for r in rows]),
        "class_name": np.array([r["class_name"] for r in rows]),
        "subtype": np.array([r["subtype"] for r in rows]),
        "probability": np.array([float(r["probability"]) for r in rows]),
    }


def fit_ood(model, train: list[Sample], results: dict, out: Path) -> dict:
    """Fit the OOD check on train features, threshold on val; report the test flag rate."""
    from pneumo import ood

    train_results = predict_split(model, train)
    detector = ood.fit(train_results["features"], results["val"]["features"],
                       train_images=train_results["images"])
    detector.save(out / ood.OOD_FILE)
    rates = {}
    for split in ("val", "test"):
        r = results[split]
        flags = [detector.is_outlier(img, f) for img, f in zip(r["images"], r["features"])]
        rates[f"{split}_flagged"] = float(np.mean(flags))
    return {"threshold": detector.threshold, "texture_range": list(detector.texture_range), **rates,
            "rule": f"saturation > {ood.SATURATION_LIMIT}, Laplacian variance outside the training "
                    f"radiographs' range, or feature distance above the "
                    f"{ood.VALIDATION_QUANTILE:.1%} quantile of validation radiographs"}


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
    if "ood" in metrics:
        lines.append(f"  OOD check flags {metrics['ood']['test_flagged']:.2%} of test radiographs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate pneumo's model on val and test.")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout chest_xray folder")
    parser.add_argument("--weights", type=Path, default=config.WEIGHTS_DIR,
                        help="folder with pneumo.keras; results are written here")
    parser.add_argument("--bootstrap", type=int, default=config.BOOTSTRAP_SAMPLES)
    args = parser.parse_args(argv)

    from pneumo.model import load_model

    model = load_model(args.weights / config.MODEL_FILE)
    splits = load_splits(args.data)
    results = {}
    for split, filename in (("val", config.VAL_PREDICTIONS_FILE),
                            ("test", config.TEST_PREDICTIONS_FILE)):
        results[split] = predict_split(model, splits[split])
        write_predictions(args.weights / filename, splits[split], results[split]["probability"])
    metrics = compute_metrics(results["val"], results["test"], args.bootstrap)
    metrics["ood"] = fit_ood(model, splits["train"], results, args.weights)
    (args.weights / config.METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))


if __name__ == "__main__":
    main()
