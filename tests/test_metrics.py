"""Metric code against values computed by hand."""

import math

import numpy as np
import pytest

from pneumo.evaluation import metrics as m

# 4 positives, 4 negatives
Y = [1, 1, 1, 1, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]


def test_auc_by_hand():
    # positive-negative pairs ranked correctly: 0.9>all 4, 0.8>all 4, 0.6>3 (not 0.7), 0.3>2
    assert m.roc_auc(Y, P) == pytest.approx(13 / 16)


def test_auc_counts_ties_as_half():
    assert m.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert m.roc_auc([1, 1, 0], [0.5, 0.7, 0.5]) == pytest.approx((0.5 + 1) / 2)


def test_auc_undefined_with_one_class():
    assert math.isnan(m.roc_auc([1, 1], [0.2, 0.3]))


def test_confusion_and_rates_at_half():
    c = m.confusion(Y, P, 0.5)
    assert c == {"tp": 3, "fn": 1, "tn": 3, "fp": 1}
    r = m.rates(c)
    assert r["accuracy"] == pytest.approx(6 / 8)
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(3 / 4)
    assert r["ppv"] == pytest.approx(3 / 4)
    assert r["npv"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_threshold_is_inclusive():
    assert m.confusion([1], [0.5], 0.5)["tp"] == 1
    assert m.confusion([0], [0.4999], 0.5)["tn"] == 1


def test_recall_curves_match_confusion():
    grid = np.linspace(0, 1, 11)
    c = m.recall_curves(Y, P, grid)
    for t, sens, spec in zip(grid, c["sensitivity"], c["specificity"]):
        r = m.metrics_at(Y, P, t)
        assert sens == pytest.approx(r["sensitivity"])
        assert spec == pytest.approx(r["specificity"])


def test_youden_threshold_maximises_sum():
    t = m.youden_threshold(Y, P)
    best = m.metrics_at(Y, P, t)
    for other in np.linspace(0, 1, 101):
        r = m.metrics_at(Y, P, other)
        assert best["sensitivity"] + best["specificity"] >= r["sensitivity"] + r["specificity"]
    assert best["sensitivity"] + best["specificity"] == pytest.approx(1.5)  # e.g. 3/4 + 3/4


def test_sensitivity_threshold_reaches_target_and_is_highest():
    t = m.sensitivity_threshold(Y, P, 1.0)
    assert m.metrics_at(Y, P, t)["sensitivity"] == 1.0
    assert 0.2 < t <= 0.3  # above 0.3 the positive at 0.3 is lost
    assert m.metrics_at(Y, P, 0.31)["sensitivity"] < 1.0


def test_ece_by_hand():
    # two bins: [0, .5) has p=.2,.4 labels 0,1 -> mean p .3, observed .5, |.2|
    #           [.5, 1] has p=.6,.8 labels 1,1 -> mean p .7, observed 1, |.3|
    assert m.expected_calibration_error([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], 2) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.3)


def test_roc_curve_ends():
    c = m.roc_curve(Y, P)
    assert (c["fpr"][0], c["tpr"][0]) == (0.0, 0.0)
    assert (c["fpr"][-1], c["tpr"][-1]) == (1.0, 1.0)
    assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(m.roc_auc(Y, P))


def test_precision_recall_by_hand():
    c = m.precision_recall_curve(Y, P)
    # highest threshold 0.9: 1 TP of 1 predicted
    assert c["precision"][0] == 1.0 and c["recall"][0] == 0.25
    # at 0.7: predicted {0.9, 0.8, 0.7}: 2 TP
    i = list(c["threshold"]).index(0.7)
    assert c["precision"][i] == pytest.approx(2 / 3) and c["recall"][i] == pytest.approx(0.5)


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 400), 0, 1)
    lo, hi = m.bootstrap_interval(y, p, m.roc_auc, samples=300)
    assert lo < m.roc_auc(y, p) < hi
    lo2, hi2 = m.bootstrap_interval(y[:100], p[:100], m.roc_auc, samples=300)
    assert hi2 - lo2 > hi - lo


def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    y = rng.uniform(size=z.size) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    a, b = m.fit_platt(z, y.astype(int))
    assert a == pytest.approx(0.5, abs=0.05)
    assert b == pytest.approx(-1.0, abs=0.07)


def test_platt_stays_finite_and_monotone_on_separable_data():
    z = np.r_[np.linspace(-12, -2, 200), np.linspace(2, 15, 600)]
    y = np.r_[np.zeros(200), np.ones(600)].astype(int)
    a, b = m.fit_platt(z, y)
    assert 0 < a < 10 and abs(b) < 20
    p = 1 / (1 + np.exp(-(a * z + b)))
    assert np.all(np.diff(p) >= 0)
    assert 0.0 < p.min() and p.max() < 1.0  # no hard 0/1: ranking survives calibration


def test_bootstrap_of_a_statistic_never_defined_gives_nan_not_a_crash():
    lo, hi = m.bootstrap_interval([0, 1, 1], [0.1, 0.2, 0.3], lambda y, p: float("nan"), samples=20)
    assert np.isnan(lo) and np.isnan(hi)
