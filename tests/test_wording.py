"""Probabilities and their test-set evidence in words (pure functions, hand-computed values)."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.reading import wording

SCORES = np.array([0.004, 0.02, 0.05, 0.12, 0.15, 0.18, 0.55, 0.62, 0.93, 0.995, 0.999, 1.0])
LABELS = np.array([0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("p, text", [
    (0.0, "< 1 %"), (0.0099, "< 1 %"), (0.01, "1 %"), (0.237, "24 %"), (0.5, "50 %"),
    (0.574, "57 %"), (0.9899, "99 %"), (0.99, "99 %"), (0.9901, "> 99 %"), (1.0, "> 99 %"),
    (None, ""), (float("nan"), ""),
])
def test_probability_text(p, text):
    assert wording.probability_text(p) == text


def test_probability_text_never_says_0_or_100_percent():
    shown = {wording.probability_text(p) for p in np.linspace(0.0, 1.0, 100_001)}
    assert not shown & {"0 %", "100 %"}
    assert not any("." in s for s in shown)
    assert {"< 1 %", "> 99 %", "1 %", "99 %"} <= shown


@pytest.mark.parametrize("p, min_count, line", [
    # [0.1, 0.2): 0.12, 0.15, 0.18 -> one pneumonia
    (0.15, 1, "On the official test set, films scored like this one (between 10 % and 20 %) had "
              "pneumonia in 1 of 3 cases."),
    # [0.6, 0.7) holds 1 -> [0.5, 0.8) 2 -> [0.4, 0.9) 2 -> [0.3, 0.99): 0.55, 0.62, 0.93
    (0.65, 3, "On the official test set, films scored like this one (between 30 % and 99 %) had "
              "pneumonia in 2 of 3 cases."),
    # top bin includes 1.0: 0.995, 0.999, 1.0
    (0.997, 1, "On the official test set, films scored like this one (99 % or higher) had "
               "pneumonia in 3 of 3 cases."),
    (1.0, 1, "On the official test set, films scored like this one (99 % or higher) had "
             "pneumonia in 3 of 3 cases."),
    (0.003, 1, "On the official test set, films scored like this one (below 1 %) had pneumonia "
               "in 0 of 1 case."),
    # [0, 0.01) holds 1 -> [0, 0.1): 0.004, 0.02, 0.05
    (0.003, 2, "On the official test set, films scored like this one (below 10 %) had pneumonia "
               "in 0 of 3 cases."),
    # 0.2 starts [0.2, 0.3), which is empty -> [0.1, 0.4)
    (0.2, 1, "On the official test set, films scored like this one (between 10 % and 40 %) had "
             "pneumonia in 1 of 3 cases."),
    (0.5, 100, "On the official test set, films scored like this one (at any probability) had "
               "pneumonia in 6 of 12 cases."),
])
def test_evidence_line(p, min_count, line):
    assert wording.evidence_line(p, SCORES, LABELS, min_count=min_count) == line


def test_evidence_line_names_a_site_sample():
    line = wording.evidence_line(0.15, SCORES, LABELS, min_count=1, source="site-sample")
    assert line.startswith("In this site's calibration sample, films scored like this one")


# the case: 66 of 83 (80 %) beside a probability of 95 %: 15.5 points apart
GAP_SCORES = np.array([0.93] * 83)
GAP_LABELS = np.array([1] * 66 + [0] * 17)


@pytest.mark.parametrize("p, sentence", [
    (0.95, "On the test films in this range the model's estimate runs high: fewer of them had "
           "pneumonia (80 %) than this probability says."),
    (0.945, ""),  # 14.98 points (66 / 83 = 79.52 %): within the rule
    (0.9453, "high"),  # 15.01 points
    (0.64, "low"),  # 15.5 points under the share
    (0.70, ""),
])
def test_evidence_gap_over_15_points(p, sentence):
    got = wording.evidence_gap(p, GAP_SCORES, GAP_LABELS, min_count=20)
    if sentence in ("high", "low"):
        assert f"runs {sentence}:" in got
        assert ("fewer" if sentence == "high" else "more") in got
    else:
        assert got == sentence


def test_evidence_gap_uses_the_evidence_lines_bin():
    # SCORES' [0.3, 0.99) bin holds 2 pneumonias of 3 (67 %): 0.65 is within 15 points
    assert wording.evidence_gap(0.65, SCORES, LABELS, min_count=3) == ""
    # [0.1, 0.2): 1 of 3 (33 %): 0.15 is 18 points under it
    assert "runs low" in wording.evidence_gap(0.15, SCORES, LABELS, min_count=1)
    assert wording.evidence_gap(0.4, np.array([]), np.array([])) == ""


@pytest.mark.parametrize("args, text", [
    ((3, 0), "Read 3 images"), ((1, 0), "Read 1 image"), ((1, 0, 2), "Read 1 new image; 2 in all"),
    ((22, 11, 22), "Read 11 of 22 files; 11 could not be read"),
    ((2, 1, 5), "Read 1 of 2 new files; 1 could not be read; 5 in all"),
    ((1, 1, 1), "Could not read 1 file"),
])
def test_files_read_text_counts(args, text):
    assert wording.files_read_text(*args) == text


def test_evidence_bin_holds_the_probability_and_enough_images():
    rng = np.random.default_rng(0)
    scores = rng.beta(0.3, 0.3, 500)
    for p in np.linspace(0, 1, 57):
        lo, hi = wording.evidence_bin(p, scores, min_count=20)
        assert lo <= p <= hi
        inside = (scores >= lo) & ((scores <= hi) if hi >= 1 else (scores < hi))
        assert inside.sum() >= 20


def test_evidence_line_without_scores_is_empty():
    assert wording.evidence_line(0.4, np.array([]), np.array([])) == ""


def test_lung_share_text_and_caution():
    from pneumo.models.lungs import OUTSIDE_LUNGS_CAUTION

    assert wording.lung_share_text(0.734) == "Heat map inside the lungs: 73 %"
    assert wording.lung_caution(0.49) == OUTSIDE_LUNGS_CAUTION
    assert wording.lung_caution(0.5) is None
    assert wording.lung_caution(0.9) is None


def test_share_of_counts_first_and_never_rounds_to_all_or_none():
    from pneumo.reading.wording import share_of

    assert share_of(382 / 383, 383) == "382 of 383 (> 99 %)"
    assert share_of(1.0, 383) == "383 of 383 (100 %)"
    assert share_of(1 / 234, 234) == "1 of 234 (< 1 %)"
    assert share_of(0.0, 10) == "0 of 10 (0 %)"
    assert share_of(98 / 234, 234) == "98 of 234 (42 %)"
    assert share_of(0.5, 0) == "-"


# --- the explorer's predictive values at a chosen prevalence (pneumo.app.charts) ---

def test_predictive_values_by_hand():
    from pneumo.app.charts import predictive_values

    ppv, npv = predictive_values(0.9, 0.8, 0.1)  # 0.09 / (0.09 + 0.18), 0.72 / (0.72 + 0.01)
    assert ppv == pytest.approx(1 / 3) and npv == pytest.approx(0.72 / 0.73)
    assert predictive_values(0.9, 0.8, 0.5) == pytest.approx((0.9 / 1.1, 0.8 / 0.9))
    ppv, npv = predictive_values(0.0, 1.0, 0.2)  # nothing flagged: PPV undefined
    assert np.isnan(ppv) and npv == pytest.approx(0.8)


def test_predictive_values_at_the_samples_own_prevalence_match_its_counts():
    from pneumo.app.charts import predictive_values
    from pneumo.evaluation import metrics as m

    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.62).astype(int)
    probs = np.clip(labels * 0.4 + rng.random(400) * 0.6, 0, 1)
    at = m.rates(m.confusion(labels, probs, 0.5))
    ppv, npv = predictive_values(at["sensitivity"], at["specificity"], labels.mean())
    assert ppv == pytest.approx(at["ppv"]) and npv == pytest.approx(at["npv"])


def _follow(diversity: float) -> dict:
    return {"test": {"PNEUMONIA": {"n": 390, "diversity": {"mean": diversity},
                                   "flip_equivariance": {"mean": 0.98},
                                   "occlusion_faithfulness": {"mean": 0.754}}}}


def test_heatmap_follow_text_says_alike_maps_do_not_localise():
    alike = wording.heatmap_follow_text(_follow(0.91))
    assert "390 PNEUMONIA test films" in alike and "0.98" in alike and "75 %" in alike
    assert "0.91" in alike and "do not use them to localise" in alike
    varied = wording.heatmap_follow_text(_follow(0.45))
    assert "0.45" in varied and "localise" not in varied
    assert wording.heatmap_follow_text({}) == wording.heatmap_follow_text({"test": {}}) == ""
