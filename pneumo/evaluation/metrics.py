"""Metrics: ROC/AUC, confusion counts, threshold choice, calibration, bootstrap intervals.

Pure numpy; labels are 0 (NORMAL) / 1 (PNEUMONIA), scores are probabilities of PNEUMONIA.
"""

from __future__ import annotations

import numpy as np


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype="int64").ravel()
    p = np.asarray(scores, dtype="float64").ravel()
    if y.shape != p.shape:
        raise ValueError("labels and scores differ in length")
    return y, p


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    y, p = _arrays(labels, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype="float64")
    sorted_p = p[order]
    # mid-ranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
    ends = np.r_[starts[1:], len(p)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit_platt(logits, labels, iterations: int = 100, precision: tuple[float, float] = (0.0, 0.0),
              mean: tuple[float, float] = (1.0, 0.0)) -> tuple[float, float]:
    """Fit ``p = sigmoid(a * logit + b)`` by Newton's method with backtracking on the log-loss.

    Uses Platt's smoothed targets, so a (nearly) separable validation set still gives finite
    parameters; the line search keeps each step from increasing the loss. ``precision`` adds a
    Gaussian prior ``precision_a/2 (a - mean_a)^2 + precision_b/2 (b - mean_b)^2`` (a MAP
    estimate, used by site calibration); at 0 it is the plain maximum-likelihood fit.
    """
    y, z = _arrays(labels, logits)
    la, lb = (float(v) for v in precision)
    ma, mb = (float(v) for v in mean)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:
        s = a * z + b  # log(1 + e^s) - t*s, computed stably
        return float(np.sum(np.logaddexp(0.0, s) - t * s)
                     + 0.5 * la * (a - ma) ** 2 + 0.5 * lb * (b - mb) ** 2)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (a * z + b)))  # sigmoid without overflow
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.sum((p - t) * z) + la * (a - ma), np.sum(p - t) + lb * (b - mb)])
        hess = np.array([[np.sum(w * z * z) + la, np.sum(w * z)],
                         [np.sum(w * z), np.sum(w) + lb]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        scale = 1.0
        while scale > 1e-10:
            candidate = loss(a - scale * step[0], b - scale * step[1])
            if candidate <= current:
                break
            scale /= 2
        else:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        improvement, current = current - candidate, candidate
        if improvement < 1e-12 * max(1.0, abs(current)):
            break
    return float(a), float(b)


def log_loss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    y, p = _arrays(labels, probabilities)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def flagged(probabilities, threshold: float) -> np.ndarray:
    """The decision rule, the only copy: PNEUMONIA when the probability reaches the threshold.

    Vectorised; a scalar probability gives a 0-d boolean array (use ``bool(...)``).
    """
    return np.asarray(probabilities, dtype="float64") >= threshold


def confusion(labels, scores, threshold: float) -> dict[str, int]:
    """Counts with the decision rule (:func:`flagged`)."""
    y, p = _arrays(labels, scores)
    pred = flagged(p, threshold)
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fn": int(np.sum(~pred & (y == 1))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fp": int(np.sum(pred & (y == 0))),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def rates(counts: dict[str, int]) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV and F1 from confusion counts."""
    tp, fn, tn, fp = counts["tp"], counts["fn"], counts["tn"], counts["fp"]
    return {
        "accuracy": _ratio(tp + tn, tp + fn + tn + fp),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def metrics_at(labels, scores, threshold: float) -> dict[str, float]:
    """:func:`rates` at ``threshold``."""
    return rates(confusion(labels, scores, threshold))


def recall_curves(labels, scores, thresholds) -> dict[str, np.ndarray]:
    """Sensitivity (PNEUMONIA recall) and specificity (NORMAL recall) at each threshold."""
    y, p = _arrays(labels, scores)
    t = np.asarray(thresholds, dtype="float64")
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    # number of scores below each threshold: predicted NORMAL by :func:`flagged`'s rule
    pos_below = np.searchsorted(pos, t, side="left")
    neg_below = np.searchsorted(neg, t, side="left")
    return {
        "threshold": t,
        "sensitivity": (len(pos) - pos_below) / max(len(pos), 1),
        "specificity": neg_below / max(len(neg), 1),
    }


def roc_curve(labels, scores) -> dict[str, np.ndarray]:
    """False- and true-positive rates at every distinct score (plus the two ends)."""
    y, p = _arrays(labels, scores)
    thresholds = np.r_[np.inf, np.unique(p)[::-1], -np.inf]
    curves = recall_curves(y, p, thresholds)
    return {"fpr": 1 - curves["specificity"], "tpr": curves["sensitivity"],
            "threshold": thresholds}


def precision_recall_curve(labels, scores) -> dict[str, np.ndarray]:
    """Precision and recall at every distinct score, highest threshold first."""
    y, p = _arrays(labels, scores)
    thresholds = np.unique(p)[::-1]
    tp = np.array([np.sum(flagged(p, t) & (y == 1)) for t in thresholds], dtype="float64")
    predicted = np.array([np.sum(flagged(p, t)) for t in thresholds], dtype="float64")
    return {"precision": tp / np.maximum(predicted, 1), "recall": tp / max(int(y.sum()), 1),
            "threshold": thresholds}


def youden_threshold(labels, scores) -> float:
    """The threshold that maximises sensitivity + specificity (midpoint between scores)."""
    y, p = _arrays(labels, scores)
    candidates = _midpoints(p)
    c = recall_curves(y, p, candidates)
    return float(candidates[int(np.argmax(c["sensitivity"] + c["specificity"]))])


def sensitivity_threshold(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``."""
    y, p = _arrays(labels, scores)
    candidates = _midpoints(p)
    c = recall_curves(y, p, candidates)
    ok = np.flatnonzero(c["sensitivity"] >= target)
    return float(candidates[ok].max()) if len(ok) else 0.0


def _midpoints(p: np.ndarray) -> np.ndarray:
    u = np.unique(p)
    return np.r_[u[0] / 2, (u[:-1] + u[1:]) / 2, (u[-1] + 1) / 2] if len(u) else np.array([0.5])


def reliability(labels, scores, bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency, count."""
    y, p = _arrays(labels, scores)
    index = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins).astype("float64")
    mean_p = np.bincount(index, weights=p, minlength=bins) / np.maximum(count, 1)
    observed = np.bincount(index, weights=y, minlength=bins) / np.maximum(count, 1)
    return {"mean_predicted": mean_p, "observed": observed, "count": count,
            "edges": np.linspace(0, 1, bins + 1)}


def expected_calibration_error(labels, scores, bins: int = 10) -> float:
    """ECE: count-weighted mean |observed - predicted| over equal-width bins."""
    r = reliability(labels, scores, bins)
    n = r["count"].sum()
    return float(np.sum(r["count"] * np.abs(r["observed"] - r["mean_predicted"])) / n) if n else 0.0


def bootstrap_interval(labels, scores, statistic, samples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(labels, scores)``, resampling images.

    (nan, nan) when the statistic is never defined on a resample (e.g. PPV with nothing called
    positive), instead of failing."""
    y, p = _arrays(labels, scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, len(y), len(y))
        v = statistic(y[idx], p[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def summary(labels, scores, threshold: float, samples: int = 2000, seed: int = 0) -> dict:
    """AUC and the six rates at ``threshold``, each with a 95 % bootstrap interval."""
    y, p = _arrays(labels, scores)
    stats = {"auc": roc_auc}
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        stats[name] = lambda yy, pp, name=name: metrics_at(yy, pp, threshold)[name]
    out = {}
    for name, fn in stats.items():
        lo, hi = bootstrap_interval(y, p, fn, samples, seed)
        out[name] = {"value": float(fn(y, p)), "ci95": [lo, hi]}
    return out
