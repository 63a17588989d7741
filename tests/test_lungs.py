"""Lung fields: mask clean-up, overlap measures, the data set's fitting rules, the committed segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo import config
from pneumo.models.lungs import (
    NO_LUNGS_WARNING,
    LungFields,
    clean_mask,
    dice,
    heatmap_in_lungs,
    heatmap_report,
    lung_fields,
)


def test_clean_mask_keeps_the_two_largest_components_and_fills_holes():
    prob = np.zeros((60, 60))
    prob[5:45, 5:25] = 0.9  # left lung
    prob[5:45, 35:55] = 0.8  # right lung
    prob[20:25, 10:15] = 0.1  # a hole in the left lung
    prob[50:53, 50:53] = 0.9  # a speck
    mask = clean_mask(prob)
    assert mask[22, 12]  # hole filled
    assert not mask[51, 51]  # speck dropped
    assert mask.sum() == 40 * 20 * 2


def test_dice_by_hand():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True  # 50 px
    b[:, 2:7] = True  # 50 px, 30 shared
    assert dice(a, b) == pytest.approx(2 * 30 / 100)
    assert dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_heatmap_in_lungs_by_hand():
    mask = np.zeros((70, 70), bool)
    mask[:, :35] = True  # left half is "lung"
    cam = np.zeros((7, 7), "float32")
    cam[3, 1] = 1.0  # a peak well inside the left half
    share, peak_inside = heatmap_in_lungs(cam, mask)
    assert peak_inside and share > 0.95
    cam = np.zeros((7, 7), "float32")
    cam[3, 6] = 1.0
    share, peak_inside = heatmap_in_lungs(cam, mask)
    assert not peak_inside and share < 0.05
    uniform_share, _ = heatmap_in_lungs(np.ones((7, 7), "float32"), mask)
    assert uniform_share == pytest.approx(0.5, abs=1e-6)


def test_heatmap_report_per_class_and_method():
    mask = np.zeros((2, 70, 70), bool)
    mask[:, :, :35] = True
    inside = np.zeros((7, 7), "float32")
    inside[3, 1] = 1
    outside = np.zeros((7, 7), "float32")
    outside[3, 6] = 1
    report = heatmap_report({"Grad-CAM": np.stack([inside, outside])}, mask, np.array([0, 1]))
    assert report["Grad-CAM"]["NORMAL"]["peak_in_lungs"] == 1.0
    assert report["Grad-CAM"]["PNEUMONIA"]["peak_in_lungs"] == 0.0
    assert report["lung_area"]["NORMAL"] == pytest.approx(0.5)
    assert report["Grad-CAM"]["NORMAL"]["empty_maps"] == 0.0
    empty = heatmap_report({"Grad-CAM": np.zeros((2, 7, 7), "float32")}, mask, np.array([0, 1]))
    assert empty["Grad-CAM"]["NORMAL"]["empty_maps"] == 1.0
    assert empty["Grad-CAM"]["NORMAL"]["peak_in_lungs"] == 0.0


def test_implausible_masks_are_flagged():
    empty = lung_fields(np.zeros((224, 224)))
    assert empty.problem == NO_LUNGS_WARNING
    full = lung_fields(np.ones((224, 224)))
    assert full.problem == NO_LUNGS_WARNING
    prob = np.zeros((224, 224))
    prob[40:180, 30:100] = 1
    prob[40:180, 124:194] = 1
    two = lung_fields(prob)
    assert two.problem is None and two.components == 2
    outline = two.outline(448, 448)
    assert outline.shape == (448, 448) and 0 < outline.mean() < 0.1


def test_lung_fields_outline_is_empty_for_an_empty_mask():
    fields = LungFields(mask=np.zeros((224, 224), bool), area=0.0, components=0)
    assert not fields.outline(100, 120).any()


@pytest.fixture(scope="module")
def lung_masks_dir():
    if not (config.SHARED_LUNG_MASKS_DIR / "MANIFEST.csv").exists():
        pytest.skip(f"lung_masks data set not found at {config.SHARED_LUNG_MASKS_DIR}")
    return config.SHARED_LUNG_MASKS_DIR


def test_only_train_and_cc_by_pairs_are_fitted_on(lung_masks_dir):
    from pneumo.data.lung_masks import read_pairs, split_for_fitting

    pairs = read_pairs(lung_masks_dir)
    assert len(pairs) == 1115
    train, val = split_for_fitting(pairs)
    used = train + val
    assert not any(p.group == "kermany_test" for p in used)
    assert all(p.licence.strip() in ("CC BY 3.0", "CC BY 4.0") for p in used if p.group == "ccxr")
    assert {p.patient for p in train}.isdisjoint({p.patient for p in val})
    assert len(used) == 300 + 90


def test_committed_segmenter_record_names_no_test_pair():
    path = config.weights_path(config.LUNG_RECORD_FILE)
    if not path.exists():
        pytest.skip("no committed lung-field record")
    record = json.loads(path.read_text())
    ids = record["fit_ids"] + record["val_ids"]
    assert ids and not any(i.startswith("kermany_test") for i in ids)


def test_committed_segmenter_finds_the_lungs_on_test_images(lung_masks_dir):
    """Dice of the committed segmenter on 24 pediatric test masks (measured, never fitted)."""
    if not config.weights_path(config.LUNG_MODEL_FILE).exists():
        pytest.skip("no committed lung-field segmenter")
    from pneumo.data.lung_masks import load_pairs, read_pairs
    from pneumo.models.lungs import LungSegmenter

    test = [p for p in read_pairs(lung_masks_dir) if p.group == "kermany_test"]
    picks = [test[i] for i in np.linspace(0, len(test) - 1, 24).astype(int)]
    images, masks = load_pairs(picks)
    fields = LungSegmenter.load().fields(images)
    scores = [dice(f.mask, m) for f, m in zip(fields, masks)]
    assert np.mean(scores) >= 0.9
    assert all(f.problem is None for f in fields)
