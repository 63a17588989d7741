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
    (0.15, 1, "Of the 3 test images scored between 10 % and 20 %, 1 had pneumonia."),
    # [0.6, 0.7) holds 1 -> [0.5, 0.8) 2 -> [0.4, 0.9) 2 -> [0.3, 0.99): 0.55, 0.62, 0.93
    (0.65, 3, "Of the 3 test images scored between 30 % and 99 %, 2 had pneumonia."),
    # top bin includes 1.0: 0.995, 0.999, 1.0
    (0.997, 1, "Of the 3 test images scored 99 % or higher, 3 had pneumonia."),
    (1.0, 1, "Of the 3 test images scored 99 % or higher, 3 had pneumonia."),
    (0.003, 1, "Of the 1 test image scored below 1 %, 0 had pneumonia."),
    # [0, 0.01) holds 1 -> [0, 0.1): 0.004, 0.02, 0.05
    (0.003, 2, "Of the 3 test images scored below 10 %, 0 had pneumonia."),
    # 0.2 starts [0.2, 0.3), which is empty -> [0.1, 0.4)
    (0.2, 1, "Of the 3 test images scored between 10 % and 40 %, 1 had pneumonia."),
    (0.5, 100, "Of the 12 test images scored at any probability, 6 had pneumonia."),
])
def test_evidence_line(p, min_count, line):
    assert wording.evidence_line(p, SCORES, LABELS, min_count=min_count) == line


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
