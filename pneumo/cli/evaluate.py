"""Evaluation CLI: ``python -m pneumo.evaluate --data PATH [--weights weights/]``.

Predicts calibrated probabilities for the carved validation split and the 624 official test
images, chooses the recommended and high-sensitivity thresholds on validation only (the
highest threshold reaching validation sensitivity 0.95 and 0.98), measures how much of each
heat map lies in the lungs (ground-truth test masks from ``--lung-masks`` when present, and
the lung-field segmenter's masks) and whether the heat maps follow the film (flip equivariance,
side preference, diversity, occlusion faithfulness: :mod:`pneumo.evaluation.heatmaps`, on
validation and test, per class), and writes ``val_predictions.csv``, ``test_predictions.csv``
and ``metrics.json``.

``--heatmaps-only`` computes only the follow-the-film measures and replaces that part of the
``heatmaps`` section of an existing ``metrics.json`` (nothing else is written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.data.splits import Sample, layout_problem, load_arrays, load_splits
from pneumo.evaluation import artifacts
from pneumo.evaluation import heatmaps as hm
from pneumo.evaluation import metrics as m

FOLLOW_KEY = "follow_the_film"  # the heatmaps section's entry for the follow-the-film measures
FOLLOW_METHOD = "Grad-CAM"  # the map the measures are taken on (the app's default map)


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
            "members": (np.stack([e.member_probabilities for e in explanations])
                        if explanations and explanations[0].member_probabilities is not None
                        else None),
            "images": images}


def ensemble_section(val: dict, test: dict, threshold: float) -> dict:
    """An ensemble's members on their own (each thresholded by the bundled rule on its own
    validation probabilities) and how often they disagree (:mod:`pneumo.reading.vote`), at
    ``threshold``, on validation and test."""
    from pneumo.reading.vote import disagreement_report

    members = []
    for k in range(val["members"].shape[1]):
        pv, pt = val["members"][:, k], test["members"][:, k]
        own = artifacts.round_threshold(m.sensitivity_threshold(
            val["label"], pv, config.RECOMMENDED_SENSITIVITY_TARGET))
        members.append({"member": k + 1, "threshold": own,
                        "val_log_loss": m.log_loss(val["label"], pv),
                        "test": {"auc": m.roc_auc(test["label"], pt),
                                 **m.metrics_at(test["label"], pt, own),
                                 "ece": m.expected_calibration_error(test["label"], pt,
                                                                     config.CALIBRATION_BINS)}})
    spread = {key: {"mean": float(np.mean([x["test"][key] for x in members])),
                    "sd": float(np.std([x["test"][key] for x in members], ddof=1))}
              for key in ("auc", "accuracy", "sensitivity", "specificity", "ece")}
    return {"members": members, "members_test_mean_sd": spread,
            "disagreement": {split: disagreement_report(d["label"], d["probability"],
                                                         d["members"], threshold)
                             for split, d in (("val", val), ("test", test))}}


def segmenter_masks(images: np.ndarray, lungs_model: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(masks (N, 224, 224) bool, whether each has no plausible lungs) from the lung-field
    segmenter; None when its model file is absent."""
    from pneumo.models.lungs import LungSegmenter

    if not Path(lungs_model).exists():
        return None
    fields = LungSegmenter.load(lungs_model).fields(images)
    return (np.stack([f.mask for f in fields]) if fields else np.zeros((0,) + images.shape[1:3], bool),
            np.array([f.problem is not None for f in fields], bool))


def explainer_cams(explainer, method: str = FOLLOW_METHOD):
    """A batch of images -> their (N, h, w) heat maps of ``method`` from ``explainer``."""
    def cams(images: np.ndarray) -> np.ndarray:
        return np.stack([e.cams[method] for e in explainer.explain(images, batch_size=32)])
    return cams


def explainer_logits(explainer):
    """A batch of images -> their (N,) uncalibrated logits from ``explainer``'s forward pass."""
    from pneumo.models.explain import pixel_batch

    def logits(images: np.ndarray) -> np.ndarray:
        return np.asarray(explainer.forward(pixel_batch(images))[1], dtype="float64").reshape(-1)
    return logits


def follow_the_film(explainer, images: np.ndarray, labels: np.ndarray,
                    lung_masks: np.ndarray | None, maps: np.ndarray | None = None,
                    members: dict | None = None, method: str = FOLLOW_METHOD) -> dict:
    """:func:`pneumo.evaluation.heatmaps.measure` for one split with this explainer's maps
    (``maps``: the films' maps when already computed; ``members``: other explainers by name)."""
    return hm.measure(images, labels, explainer_cams(explainer, method), explainer_logits(explainer),
                      lung_masks=lung_masks, maps=maps,
                      members={k: explainer_cams(e, method) for k, e in (members or {}).items()})


def follow_the_film_section(per_split: dict, lungs_model: Path | None) -> dict:
    """The ``heatmaps.follow_the_film`` entry of ``metrics.json``: the per-split reports and what
    they were measured with."""
    return {"method": FOLLOW_METHOD,
            "mirrored_film": "np.flip(image, axis=1) of the 224x224 input",
            "lung_masks": (f"lung-field segmenter {Path(lungs_model).name}" if lungs_model
                           else "none (image halves only)"),
            "blur_sigma_px": hm.BLUR_SIGMA_OF_WIDTH * config.IMAGE_SIZE,
            **per_split}


def heatmap_figures(test: dict, lung_masks: Path | None, lungs_model: Path,
                    segmenter: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Heat-map mass and peaks in the lungs on test: with ground-truth masks, and segmenter masks
    (``segmenter``: :func:`segmenter_masks` of the test images when already computed)."""
    from pneumo.models.lungs import heatmap_report

    out = {}
    if lung_masks is not None and (Path(lung_masks) / "MANIFEST.csv").exists():
        from pneumo.data.lung_masks import masks_by_filename, read_mask

        paths = masks_by_filename(lung_masks, "kermany_test")
        have = np.array([f in paths for f in test["filename"]])
        if have.any():
            masks = np.stack([read_mask(paths[f]) for f in test["filename"][have]])
            cams = {k: v[have] for k, v in test["cams"].items()}
            out["ground_truth_masks"] = heatmap_report(cams, masks, test["label"][have])
    segmenter = segmenter if segmenter is not None else segmenter_masks(test["images"], lungs_model)
    if segmenter is not None:
        masks, no_lungs = segmenter
        out["segmenter_masks"] = heatmap_report(test["cams"], masks, test["label"])
        out["segmenter_masks"]["no_lungs_flagged"] = float(np.mean(no_lungs))
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
        if "lung_area" not in report:  # the follow-the-film entry: below
            continue
        lines.append(f"  heat maps vs {source.replace('_', ' ')} (n={report['n']}; lungs cover "
                     + ", ".join(f"{k} {v:.1%}" for k, v in report["lung_area"].items()) + ")")
        for method in ("Grad-CAM", "Grad-CAM++"):
            for name, r in report.get(method, {}).items():
                lines.append(f"    {method:<10} {name:<9} mass in lungs {r['mass_in_lungs']:.1%}, "
                             f"peak in lungs {r['peak_in_lungs']:.1%}, no positive map "
                             f"{r.get('empty_maps', 0):.1%} (n={r['n']})")
    lines.extend(format_follow(metrics.get("heatmaps", {}).get(FOLLOW_KEY, {})))
    if "ood" in metrics:
        lines.append(f"  OOD check flags {metrics['ood']['test_flagged']:.2%} of test radiographs")
    return "\n".join(lines)


def format_follow(section: dict, indent: str = "  ") -> list[str]:
    """Lines for the follow-the-film measures of each split (PNEUMONIA films, then NORMAL)."""
    lines = []
    for split in ("val", "test"):
        for name in ("PNEUMONIA", "NORMAL"):
            r = section.get(split, {}).get(name)
            if not r:
                continue
            side, peak = r["side_preference"], r["peak_side"]
            occ = r.get("occlusion_faithfulness_lungs", r.get("occlusion_faithfulness", {}))
            lines.append(
                f"{indent}{section.get('method', '')} {split} {name} (n={r['n']}): flip equivariance "
                f"{r['flip_equivariance']['mean']:.2f} (unflipped {r['unflipped_correlation']['mean']:.2f}; "
                f"{r['flip_equivariance']['undefined']} undefined), heavier image-right "
                f"{side['right']}/{side['right'] + side['left']}, peak image-right "
                f"{peak['right']}/{r['n']}, correlation with the mean map "
                f"{r['diversity']['mean']:.2f}, occlusion faithfulness "
                f"{occ.get('mean', float('nan')):.1%}")
    return lines


def heatmaps_only(args, parser) -> None:
    """``--heatmaps-only``: the follow-the-film measures on val and test, written into the
    ``heatmaps`` section of the existing ``metrics.json``; nothing else is touched."""
    from pneumo.models.runtime import load_explainer

    if not artifacts.weights_file(config.METRICS_FILE, args.weights).exists():
        parser.error(f"--heatmaps-only updates {args.weights / config.METRICS_FILE}, which is "
                     "missing: run the whole evaluation first")
    explainer = load_explainer(args.weights / config.MODEL_FILE)
    splits = load_splits(args.data)
    section = {}
    for split in ("val", "test"):
        images, labels = load_arrays(splits[split])
        masks = segmenter_masks(images, args.lungs)
        section[split] = follow_the_film(explainer, images, labels,
                                         None if masks is None else masks[0])
    figures = follow_the_film_section(section, args.lungs if Path(args.lungs).exists() else None)
    current = artifacts.read_metrics(args.weights)
    heatmaps = dict(current.heatmaps) if current else {}
    heatmaps[FOLLOW_KEY] = figures
    artifacts.update_metrics_section("heatmaps", heatmaps, args.weights)
    print("\n".join(format_follow(figures)))


def scope_section(samples: list[Sample], weights: Path, threshold: float,
                  batch_size: int = 32) -> dict:
    """The ``scope`` section of metrics.json: every test image through the app's reading path
    and checks (:func:`pneumo.reading.reader.read_batch`, trust states of
    :mod:`pneumo.reading.trust`); the share given each verdict, and the classifier's figures at
    ``threshold`` on all read images and on the trusted ones."""
    from collections import Counter

    from pneumo.cli.loaders import load_quality_checker, load_segmenter
    from pneumo.evaluation.metrics import metrics_at, roc_auc
    from pneumo.models import ood
    from pneumo.models.population import load_population, population_file
    from pneumo.models.runtime import load_explainer
    from pneumo.reading import trust
    from pneumo.reading.reader import read_batch
    from pneumo.reading.scope import ScopeCheck

    explainer = load_explainer(weights / config.MODEL_FILE)
    checks = dict(ood_check=ood.load_detector(artifacts.ood_file(weights)), segmenter=load_segmenter(),
                  quality_checker=load_quality_checker(),
                  scope_check=ScopeCheck(load_population(population_file(weights))))
    readings = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        readings += read_batch([(s.filename, s.path.read_bytes()) for s in chunk], explainer,
                               batch_size=batch_size, **checks)
    labels = np.array([s.label for s in samples])
    p = np.array([r.probability if r.ok else np.nan for r in readings])
    states = Counter(r.trust.state for r in readings)
    reasons = Counter(r.trust.code for r in readings if r.trust.state == trust.OUT_OF_SCOPE)
    section = {"n": len(readings), "threshold": threshold,
               "share": {state: states[state] / len(readings) for state in trust.STATES},
               "out_of_scope_by_reason": dict(sorted(reasons.items())),
               "population_check": checks["scope_check"].population is not None}
    for name, keep in (("all_read", np.isfinite(p)),
                       ("trusted", np.array([r.ok and r.trust.trusted for r in readings]))):
        m = metrics_at(labels[keep], p[keep], threshold)
        section[name] = {"n": int(keep.sum()), "auc": roc_auc(labels[keep], p[keep]),
                         **{k: m[k] for k in ("accuracy", "sensitivity", "specificity")}}
    return section


def format_ensemble(section: dict) -> list[str]:
    """The ensemble section as printed lines."""
    lines = ["members on their own (test; each at its own validation threshold):"]
    lines += [f"  member {x['member']}: AUC {x['test']['auc']:.3f}, accuracy "
              f"{x['test']['accuracy']:.3f}, ECE {x['test']['ece']:.3f}" for x in section["members"]]
    for split, r in section["disagreement"].items():
        without = r["accuracy_without_disagreeing"]
        lines.append(f"members disagree ({split}): {r['disagree']} of {r['n']} "
                     f"({r['disagree_share']:.1%}); accuracy {r['accuracy_all']:.3f} with them, "
                     + (f"{without:.3f} without" if without is not None else "none left without"))
    return lines


def format_scope(section: dict) -> list[str]:
    if not section:
        return []
    share = section["share"]
    t = section["trusted"]
    return [f"scope (test split, app path): trusted {share['trusted']:.1%}, doubtful "
            f"{share['doubtful']:.1%}, out of scope {share['out_of_scope']:.1%} "
            f"{section['out_of_scope_by_reason']}",
            f"  on the {t['n']} trusted images at {section['threshold']:.3f}: AUC {t['auc']:.4f}, "
            f"accuracy {t['accuracy']:.4f}, sensitivity {t['sensitivity']:.4f}, specificity "
            f"{t['specificity']:.4f}"]


def scope_only(args) -> None:
    """``--scope-only``: the ``scope`` section of an existing metrics.json, nothing else."""
    section = scope_section(load_splits(args.data)["test"], args.weights,
                            artifacts.recommended_threshold(args.weights))
    artifacts.update_metrics_section("scope", section, args.weights)
    print("\n".join(format_scope(section)))


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
    parser.add_argument("--heatmaps-only", action="store_true",
                        help="compute only whether the heat maps follow the film (flip "
                             "equivariance, side preference, diversity, occlusion) on val and "
                             "test and put them in the existing metrics.json's heatmaps section")
    parser.add_argument("--scope-only", action="store_true",
                        help="run only the test split through the app's checks and put the "
                             "'scope' section (verdict shares, figures on trusted images) in the "
                             "existing metrics.json")
    args = parser.parse_args(argv)

    from pneumo.models.classifier import load_model, model_problem
    from pneumo.models.explain import CamExplainer

    if problem := layout_problem(args.data) or model_problem(args.weights / config.MODEL_FILE):
        parser.error(problem)

    if args.heatmaps_only:
        heatmaps_only(args, parser)
        return
    if args.scope_only:
        scope_only(args)
        return
    model = load_model(args.weights / config.MODEL_FILE)
    explainer = CamExplainer(model)
    splits = load_splits(args.data)
    results, masks, follow = {}, {}, {}
    for split in ("val", "test"):
        results[split] = predict_split(model, splits[split], explainer)
        artifacts.write_predictions(split, splits[split], results[split]["probability"], args.weights)
        masks[split] = segmenter_masks(results[split]["images"], args.lungs)
        follow[split] = follow_the_film(
            explainer, results[split]["images"], results[split]["label"],
            None if masks[split] is None else masks[split][0],
            maps=results[split]["cams"].get(FOLLOW_METHOD))
    metrics = compute_metrics(results["val"], results["test"], args.bootstrap)
    if results["val"]["members"] is not None:
        metrics["ensemble"] = ensemble_section(
            results["val"], results["test"],
            artifacts.round_threshold(metrics["thresholds"]["recommended"]))
    metrics["heatmaps"] = heatmap_figures(results["test"], args.lung_masks, args.lungs,
                                          masks["test"])
    metrics["heatmaps"][FOLLOW_KEY] = follow_the_film_section(
        follow, args.lungs if masks["test"] is not None else None)
    previous_ood = artifacts.read_ood_figures(args.weights)
    if args.keep_ood and previous_ood and artifacts.ood_file(args.weights).exists():
        print("kept the OOD reference and its figures (--keep-ood)")
        metrics["ood"] = previous_ood
    else:
        metrics["ood"] = fit_ood(model, splits["train"], results, args.weights)
    metrics["scope"] = scope_section(splits["test"], args.weights,
                                     artifacts.round_threshold(metrics["thresholds"]["recommended"]))
    artifacts.write_metrics(metrics, args.weights)
    print(format_table(metrics))
    if "ensemble" in metrics:
        print("\n".join(format_ensemble(metrics["ensemble"])))
    print("\n".join(format_scope(metrics["scope"])))


if __name__ == "__main__":
    main()
