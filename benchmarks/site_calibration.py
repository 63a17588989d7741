"""Honest evaluation of site calibration on the official test split, by cross-fitting.

    python benchmarks/site_calibration.py [--predictions weights/test_predictions.csv]

The official test split (624 images) stands in for a site. Its patients are split in two halves
(stratified by class, grouped by patient, so no child is on both sides). Site calibration
(:func:`pneumo.reading.site.build`, the code the CLI and the app run) is fitted on one half and
evaluated on the other, and the other way round; pooled over both halves every image is
evaluated once, by a calibration and a threshold that never saw it. Against it: the bundled
calibration and the bundled recommended threshold (``weights/metrics.json``) on the same
images. 95 % bootstrap intervals resample the pooled images.

Then the sample size: 25, 50, 100 and 200 images drawn at random from the calibration half
(50 draws each way), evaluated on the whole other half: mean, spread and 5-95 % range, for the
site calibration with its prior and for a plain Platt fit (prior strength 0) on the same draws.

No model is run: the bundled probabilities come from ``weights/test_predictions.csv`` (label,
patient, probability). Results go to ``benchmarks/site_calibration_results.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from pneumo import config  # noqa: E402
from pneumo.data.splits import patient_id  # noqa: E402
from pneumo.evaluation import metrics as m  # noqa: E402
from pneumo.evaluation.artifacts import recommended_threshold, round_threshold  # noqa: E402
from pneumo.reading import site  # noqa: E402

OUT = ROOT / "benchmarks" / "site_calibration_results.json"
SIZES = (25, 50, 100, 200)
DRAWS = 50
SEED = 11
TARGETS = {"sample_size": 100, "ece_max": 0.04, "accuracy_min": 0.93, "sensitivity_min": 0.93}
STATS = ("ece", "accuracy", "sensitivity", "specificity", "threshold", "scale", "bias")
NO_MODEL = "0" * 64  # the fingerprint field of the calibrations made here (never saved)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load(path: Path) -> dict[str, np.ndarray]:
    """label, probability and patient per image (patient from the file name when no column)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    return {"label": np.array([int(r["label"]) for r in rows]),
            "probability": np.array([float(r["probability"]) for r in rows]),
            "patient": np.array([r.get("patient") or patient_id(r["filename"]) for r in rows])}


def patient_folds(patients: np.ndarray, labels: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Fold 0/1 per image, grouped by patient: within each class (a patient's class: any
    pneumonia image) patients are shuffled and each goes to the fold with fewer images of that
    class so far, so both halves have about the same size and the test split's mix."""
    rng = np.random.default_rng(seed)
    names, counts = np.unique(patients, return_counts=True)
    sick = {p: bool(labels[patients == p].max()) for p in names}
    size = dict(zip(names, counts))
    fold_of: dict[str, int] = {}
    for cls in (False, True):
        filled = [0, 0]
        for p in rng.permutation([p for p in names if sick[p] is cls]):
            k = int(filled[1] < filled[0])
            fold_of[p] = k
            filled[k] += int(size[p])
    return np.array([fold_of[p] for p in patients])


def calibrate_on(y: np.ndarray, p: np.ndarray, strength: float = config.SITE_PRIOR_STRENGTH
                 ) -> site.SiteCalibration:
    """The site calibration the CLI would write for this sample."""
    return site.build("benchmark", y, p, NO_MODEL, created="2000-01-01", strength=strength)


def evaluate(cal: site.SiteCalibration, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The calibration and its recommended threshold (as the app uses it) on other images."""
    q = cal.apply(p)
    at = m.metrics_at(y, q, cal.recommended)
    return {"ece": m.expected_calibration_error(y, q, config.CALIBRATION_BINS),
            "accuracy": at["accuracy"], "sensitivity": at["sensitivity"],
            "specificity": at["specificity"], "threshold": cal.recommended,
            "scale": cal.scale, "bias": cal.bias}


def _interval(y, scores, statistic, samples: int, seed: int) -> list[float]:
    return list(m.bootstrap_interval(y, scores, statistic, samples, seed))


def _figures(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray, samples: int, seed: int
             ) -> dict:
    """ECE of ``probs`` and the rates of 0/1 ``decisions``, each with a bootstrap interval."""
    out = {"ece": {"value": m.expected_calibration_error(y, probs, config.CALIBRATION_BINS),
                   "ci95": _interval(y, probs, lambda yy, pp: m.expected_calibration_error(
                       yy, pp, config.CALIBRATION_BINS), samples, seed)}}
    d = decisions.astype("float64")
    for name in ("accuracy", "sensitivity", "specificity"):
        def stat(yy, dd, name=name):
            return m.metrics_at(yy, dd, 0.5)[name]
        out[name] = {"value": stat(y, d), "ci95": _interval(y, d, stat, samples, seed)}
    return out


def crossfit(data: dict, folds: np.ndarray, bundled_threshold: float,
             samples: int = config.BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Calibrate on one half, evaluate on the other, both ways; pooled figures."""
    y, p = data["label"], data["probability"]
    site_p = np.empty_like(p)
    decision = np.zeros(len(y), dtype=bool)
    halves = []
    for k in (0, 1):
        cal_idx, ev_idx = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        cal = calibrate_on(y[cal_idx], p[cal_idx])
        site_p[ev_idx] = cal.apply(p[ev_idx])
        decision[ev_idx] = site_p[ev_idx] >= cal.recommended
        halves.append({
            "calibrated_on": {"images": len(cal_idx), "pneumonia": int(y[cal_idx].sum()),
                              "patients": len(np.unique(data["patient"][cal_idx]))},
            "scale": cal.scale, "bias": cal.bias, "thresholds": cal.thresholds,
            "site": evaluate(cal, y[ev_idx], p[ev_idx]),
            "bundled": _bundled(y[ev_idx], p[ev_idx], bundled_threshold),
        })
    return {
        "halves": halves,
        "pooled": {
            "n": int(len(y)),
            "site": _figures(y, site_p, decision, samples, seed),
            "bundled": _figures(y, p, p >= bundled_threshold, samples, seed),
        },
        "ece_noise_floor": ece_noise_floor(site_p, folds, seed=seed),
    }


def ece_noise_floor(probs: np.ndarray, folds: np.ndarray, repeats: int = 200, seed: int = 0
                    ) -> dict[str, float]:
    """The ECE a perfectly calibrated model would still show on one evaluation half: labels drawn
    from ``probs`` themselves, ECE per half, mean and 95th percentile. Below this, a measured ECE
    cannot be told apart from sampling noise."""
    rng = np.random.default_rng(seed)
    halves, pooled = [], []
    for _ in range(repeats):
        drawn = (rng.random(len(probs)) < probs).astype(int)
        pooled.append(m.expected_calibration_error(drawn, probs, config.CALIBRATION_BINS))
        for k in (0, 1):
            halves.append(m.expected_calibration_error(drawn[folds == k], probs[folds == k],
                                                       config.CALIBRATION_BINS))
    return {"mean": float(np.mean(halves)), "p95": float(np.percentile(halves, 95)),
            "images_per_half": int(np.sum(folds == 0)),
            "pooled_mean": float(np.mean(pooled)), "pooled_p95": float(np.percentile(pooled, 95))}


def _bundled(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    at = m.metrics_at(y, p, threshold)
    return {"ece": m.expected_calibration_error(y, p, config.CALIBRATION_BINS),
            "accuracy": at["accuracy"], "sensitivity": at["sensitivity"],
            "specificity": at["specificity"], "threshold": threshold}


def draw_sample(rng: np.random.Generator, y: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """``n`` indices of ``y`` at random; redrawn (counted) until each class has the CLI's minimum."""
    redraws = 0
    while True:
        idx = rng.choice(len(y), size=n, replace=False)
        if min(int(y[idx].sum()), n - int(y[idx].sum())) >= config.SITE_MIN_PER_CLASS:
            return idx, redraws
        redraws += 1


def size_runs(data: dict, folds: np.ndarray, n: int, draws: int = DRAWS, seed: int = SEED
              ) -> dict[str, list]:
    """Per draw and direction: the figures on the evaluation half, with the prior and without."""
    y, p = data["label"], data["probability"]
    runs: dict[str, list] = {"prior": [], "plain": [], "redraws": []}
    for draw in range(draws):
        for k in (0, 1):
            rng = np.random.default_rng([seed, n, draw, k])
            cal_idx, ev_idx = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
            chosen, redraws = draw_sample(rng, y[cal_idx], min(n, len(cal_idx)))
            yc, pc = y[cal_idx][chosen], p[cal_idx][chosen]
            runs["redraws"].append(redraws)
            for name, strength in (("prior", config.SITE_PRIOR_STRENGTH), ("plain", 0.0)):
                runs[name].append(evaluate(calibrate_on(yc, pc, strength), y[ev_idx], p[ev_idx]))
    return runs


def spread(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for stat in STATS:
        v = np.array([r[stat] for r in runs], dtype="float64")
        out[stat] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                     "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
    return out


def targets(summary: dict, runs: list[dict[str, float]]) -> dict:
    """The targets at TARGETS['sample_size'] images: on the means over draws, and the share of
    draws meeting all of them."""
    ece, acc, sens = (summary[k]["mean"] for k in ("ece", "accuracy", "sensitivity"))
    each = [r["ece"] <= TARGETS["ece_max"] and r["accuracy"] >= TARGETS["accuracy_min"]
            and r["sensitivity"] >= TARGETS["sensitivity_min"] for r in runs]
    return {
        "ece": {"mean": ece, "target": f"<= {TARGETS['ece_max']}", "met": ece <= TARGETS["ece_max"],
                "margin": TARGETS["ece_max"] - ece},
        "accuracy": {"mean": acc, "target": f">= {TARGETS['accuracy_min']}",
                     "met": acc >= TARGETS["accuracy_min"], "margin": acc - TARGETS["accuracy_min"]},
        "sensitivity": {"mean": sens, "target": f">= {TARGETS['sensitivity_min']}",
                        "met": sens >= TARGETS["sensitivity_min"],
                        "margin": sens - TARGETS["sensitivity_min"]},
        "share_of_draws_meeting_all": float(np.mean(each)),
    }


def run(predictions: Path, metrics_path: Path, sizes=SIZES, draws: int = DRAWS, seed: int = SEED,
        samples: int = config.BOOTSTRAP_SAMPLES) -> dict:
    data = load(predictions)
    bundled_threshold = recommended_threshold(Path(metrics_path).parent)
    folds = patient_folds(data["patient"], data["label"], seed)
    model = config.weights_path(config.MODEL_FILE)
    out = {
        "inputs": {
            "predictions": str(Path(predictions).resolve().relative_to(ROOT))
            if Path(predictions).resolve().is_relative_to(ROOT) else str(predictions),
            "predictions_sha256": sha256_of(predictions),
            "model_fingerprint": site.model_fingerprint(model) if model.exists() else None,
            "bundled_recommended_threshold": bundled_threshold,
            "n": int(len(data["label"])), "n_pneumonia": int(data["label"].sum()),
            "patients": int(len(np.unique(data["patient"]))),
        },
        "settings": {
            "seed": seed, "draws": draws, "sizes": list(sizes), "bootstrap_samples": samples,
            "prior_sd": list(config.SITE_PRIOR_SD), "prior_strength": config.SITE_PRIOR_STRENGTH,
            "threshold_rule": f"highest threshold with sample sensitivity >= "
                              f"{config.RECOMMENDED_SENSITIVITY_TARGET}, rounded to 3 decimals",
            "ece_bins": config.CALIBRATION_BINS, "targets": TARGETS,
        },
        "folds": {"images": [int(np.sum(folds == k)) for k in (0, 1)],
                  "pneumonia": [int(data["label"][folds == k].sum()) for k in (0, 1)]},
        "crossfit_half": crossfit(data, folds, bundled_threshold, samples),
        "sample_size": {},
    }
    for n in sizes:
        runs = size_runs(data, folds, n, draws, seed)
        out["sample_size"][str(n)] = {
            "runs": len(runs["prior"]), "redraws": int(sum(runs["redraws"])),
            "site": spread(runs["prior"]), "plain_platt": spread(runs["plain"]),
        }
        if n == TARGETS["sample_size"]:
            out["targets"] = {"site": targets(out["sample_size"][str(n)]["site"], runs["prior"]),
                              "plain_platt": targets(out["sample_size"][str(n)]["plain_platt"],
                                                     runs["plain"])}
    return out


def table(results: dict) -> str:
    def ci(v: dict) -> str:
        return f"{v['value']:.3f} ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})"

    pooled = results["crossfit_half"]["pooled"]
    lines = [f"Official test split as a site: {results['inputs']['n']} images, "
             f"{results['inputs']['patients']} patients, 2 folds by patient "
             f"({results['folds']['images'][0]} / {results['folds']['images'][1]} images).",
             "",
             "Calibrate on one half (all of it), evaluate on the other, both ways, pooled:",
             f"{'':<34}{'ECE':>22}{'accuracy':>22}{'sensitivity':>22}{'specificity':>22}"]
    for name, label in (("bundled", "bundled calibration + threshold "
                                    f"{results['inputs']['bundled_recommended_threshold']:.3f}"),
                        ("site", "site calibration + site threshold")):
        f = pooled[name]
        lines.append(f"{label:<34}" + "".join(f"{ci(f[k]):>22}" for k in
                                              ("ece", "accuracy", "sensitivity", "specificity")))
    floor = results["crossfit_half"]["ece_noise_floor"]
    lines.append(f"  (ECE of a perfectly calibrated model, from noise alone: pooled "
                 f"{floor['pooled_mean']:.3f} on average, 95th percentile {floor['pooled_p95']:.3f}; "
                 f"on one half of {floor['images_per_half']} images {floor['mean']:.3f}, "
                 f"95th percentile {floor['p95']:.3f})")
    for k, h in enumerate(results["crossfit_half"]["halves"]):
        lines.append(f"  half {k}: a={h['scale']:.3f} b={h['bias']:+.3f} site threshold "
                     f"{round_threshold(h['thresholds']['recommended']):.3f}")
    lines += ["", "Site sample drawn from the calibration half, evaluated on the other half "
                  f"({results['settings']['draws']} draws x 2 directions; mean +- sd [5-95 %]):",
              f"{'images':>6} {'fit':<12}{'ECE':>26}{'accuracy':>26}{'sensitivity':>26}"
              f"{'specificity':>26}"]
    for n, entry in results["sample_size"].items():
        for fit in ("site", "plain_platt"):
            s = entry[fit]
            lines.append(f"{n:>6} {fit.replace('_', ' '):<12}" + "".join(
                f"{s[k]['mean']:>8.3f} +- {s[k]['sd']:.3f} [{s[k]['p5']:.2f}-{s[k]['p95']:.2f}]"
                for k in ("ece", "accuracy", "sensitivity", "specificity")))
    t = results.get("targets", {}).get("site")
    if t:
        lines += ["", f"Targets at {TARGETS['sample_size']} images (means over draws):"]
        for k in ("ece", "accuracy", "sensitivity"):
            lines.append(f"  {k:<12} {t[k]['mean']:.3f} (target {t[k]['target']}): "
                         + ("met" if t[k]["met"] else "MISSED")
                         + f" by {abs(t[k]['margin']):.3f}")
        lines.append(f"  draws meeting all three: {t['share_of_draws_meeting_all']:.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=Path,
                        default=config.weights_path(config.TEST_PREDICTIONS_FILE))
    parser.add_argument("--metrics", type=Path, default=config.weights_path(config.METRICS_FILE),
                        help="metrics.json for the bundled recommended threshold")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--draws", type=int, default=DRAWS)
    parser.add_argument("--bootstrap", type=int, default=config.BOOTSTRAP_SAMPLES)
    args = parser.parse_args(argv)
    if not args.predictions.exists():
        print(f"No predictions at {args.predictions}: run `python -m pneumo.evaluate` first.",
              file=sys.stderr)
        return 1
    results = run(args.predictions, args.metrics, draws=args.draws, samples=args.bootstrap)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"\n-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
