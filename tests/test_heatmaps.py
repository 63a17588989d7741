"""Follow-the-film heat-map measures (pneumo.evaluation.heatmaps) on hand-made maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumo.evaluation import heatmaps as hm


def one_hot(row: int, col: int, size: int = 7) -> np.ndarray:
    m = np.zeros((size, size))
    m[row, col] = 1.0
    return m


def blob(col: int, size: int = 7) -> np.ndarray:
    """A soft vertical stripe centred on ``col`` (a lung-shaped heat map, roughly)."""
    cols = np.arange(size)
    return np.tile(np.exp(-((cols - col) ** 2) / 2.0), (size, 1))


# --- correlation and the flip measures --------------------------------------------------------

def test_correlation_identical_opposite_and_constant():
    a = blob(5)
    assert hm.correlation(a, a) == pytest.approx(1.0)
    assert hm.correlation(a, 1 - a) == pytest.approx(-1.0)
    assert math.isnan(hm.correlation(a, np.zeros((7, 7))))  # an all-zero map: undefined
    assert math.isnan(hm.correlation(np.full((7, 7), 0.3), a))
    batch = hm.correlation(np.stack([a, a]), np.stack([a, np.zeros((7, 7))]))
    assert batch[0] == pytest.approx(1.0) and math.isnan(batch[1])


def test_correlation_rejects_different_shapes():
    with pytest.raises(ValueError):
        hm.correlation(np.ones((7, 7)), np.ones((14, 14)))


def test_flip_measures_for_a_map_that_follows_the_film_and_one_that_stays():
    original = blob(5) * np.linspace(0.5, 1.0, 7)[:, None]  # heavier on the image right
    following = hm.mirror(original)  # the mirrored film's map is the mirror of the map
    staying = original  # the mirrored film's map stays where it was
    assert hm.flip_equivariance(following, original) == pytest.approx(1.0)
    assert hm.unflipped_correlation(following, original) < 0.0
    assert hm.unflipped_correlation(staying, original) == pytest.approx(1.0)
    assert hm.flip_equivariance(staying, original) < 0.0


def test_flip_equivariance_of_a_symmetric_map_is_one_both_ways():
    symmetric = blob(3)
    assert hm.flip_equivariance(symmetric, symmetric) == pytest.approx(1.0)
    assert hm.unflipped_correlation(symmetric, symmetric) == pytest.approx(1.0)


def test_summary_leaves_undefined_values_out_and_counts_them():
    s = hm.summary([1.0, 0.5, float("nan"), 0.0])
    assert s == {"mean": pytest.approx(0.5), "n": 3, "undefined": 1}
    empty = hm.summary([float("nan")])
    assert math.isnan(empty["mean"]) and empty["n"] == 0 and empty["undefined"] == 1


# --- sides ------------------------------------------------------------------------------------

def test_heavier_side_by_image_half_and_the_middle_column_counts_for_neither():
    assert hm.heavier_side(one_hot(2, 6)) == "right"
    assert hm.heavier_side(one_hot(2, 0)) == "left"
    assert hm.heavier_side(one_hot(2, 3)) is None  # middle column of 7
    assert hm.heavier_side(np.zeros((7, 7))) is None
    assert hm.side_masses(one_hot(1, 4) * 2 + one_hot(1, 3) * 5) == (0.0, 2.0)
    even = np.zeros((4, 4))
    even[0, 2] = 1.0  # column 2 of 4 is already the right half
    assert hm.heavier_side(even) == "right"


def test_heavier_side_inside_the_lungs_uses_the_mask_resized_to_the_grid():
    heat = one_hot(3, 6) * 3.0 + one_hot(3, 1) * 1.0  # heavier right, but the right mass ...
    mask = np.zeros((224, 224), bool)
    mask[:, :96] = True  # ... lies outside these lung fields (columns 0-2 of 7 only)
    assert hm.heavier_side(heat) == "right"
    assert hm.heavier_side(heat, mask) == "left"
    assert hm.side_masses(heat, mask) == (pytest.approx(1.0), pytest.approx(0.0))


def test_lung_grid_is_the_share_of_each_cell_in_the_lungs():
    mask = np.zeros((224, 224), bool)
    mask[:, :112] = True  # the image-left half: cells 0-2 fully, cell 3 half
    grid = hm.lung_grid(mask, 7, 7)
    np.testing.assert_allclose(grid[0], [1, 1, 1, 0.5, 0, 0, 0])
    assert hm.lung_grid(np.eye(7, dtype=bool), 7, 7).sum() == 7  # already on the grid


def test_side_preference_counts_right_among_films_with_a_side():
    maps = np.stack([one_hot(0, 6), one_hot(1, 5), one_hot(2, 4), one_hot(3, 0), one_hot(4, 3)])
    assert hm.side_preference(maps) == pytest.approx(0.75)  # 3 right, 1 left, 1 tie left out
    assert hm.side_counts(hm.heavier_sides(maps)) == {
        "right_share": pytest.approx(0.75), "right": 3, "left": 1, "middle": 0, "none": 1}
    assert math.isnan(hm.side_preference(np.zeros((2, 7, 7))))


def test_peak_side():
    assert hm.peak_side(one_hot(0, 6)) == "right"
    assert hm.peak_side(one_hot(0, 2)) == "left"
    assert hm.peak_side(one_hot(0, 3)) == "middle"
    assert hm.peak_side(np.full((7, 7), 0.2)) is None
    cells = hm.peak_cells(np.stack([one_hot(2, 5), one_hot(2, 5), one_hot(0, 0), np.zeros((7, 7))]))
    assert cells.most_common(1)[0] == ((2, 5), 2) and sum(cells.values()) == 3


# --- diversity and agreement ------------------------------------------------------------------

def test_diversity_is_one_for_the_same_picture_and_lower_for_different_ones():
    same = np.stack([blob(5)] * 4)
    assert hm.diversity(same) == pytest.approx(1.0)
    # two one-hot maps in different cells: each correlates sqrt(47/96) with their mean (49 cells)
    two = np.stack([one_hot(1, 1), one_hot(5, 5)])
    assert hm.diversity(two) == pytest.approx(math.sqrt(47 / 96))
    with_empty = np.stack([one_hot(1, 1), one_hot(5, 5), np.zeros((7, 7))])
    assert hm.diversity(with_empty) == pytest.approx(math.sqrt(47 / 96))  # the empty map is left out
    assert np.isnan(hm.correlations_with_mean(with_empty)[2])


def test_member_agreement_among_films_where_both_models_pick_a_side():
    a = np.stack([one_hot(0, 6), one_hot(0, 6), one_hot(0, 0), one_hot(0, 3)])
    b = np.stack([one_hot(0, 5), one_hot(0, 1), one_hot(0, 2), one_hot(0, 6)])
    np.testing.assert_array_equal(hm.agreements(a, b)[:3], [1.0, 0.0, 1.0])
    assert hm.member_agreement(a, b) == pytest.approx(2 / 3)  # the tie (film 4) left out
    assert hm.member_agreement(a, a[:, :, ::-1][[0, 1, 2, 3]]) == pytest.approx(0.0)


def test_pairwise_agreement_over_every_pair_of_members():
    a = np.stack([one_hot(0, 6), one_hot(0, 6), one_hot(0, 0)])
    b = np.stack([one_hot(0, 5), one_hot(0, 1), one_hot(0, 2)])  # agrees with a on 2 of 3
    c = a[:, :, ::-1]  # always the other side from a
    report = hm.pairwise_agreement({"a": a, "b": b, "c": c})
    assert set(report["pairs"]) == {"a | b", "a | c", "b | c"}
    assert report["pairs"]["a | c"]["mean"] == pytest.approx(0.0)
    assert report["lowest"] == pytest.approx(0.0)
    assert report["mean"] == pytest.approx((2 / 3 + 0.0 + 1 / 3) / 3)


# --- occlusion --------------------------------------------------------------------------------

def textured_images(n: int, size: int = 224) -> np.ndarray:
    """Grey images with strong noise: blurring a region removes its texture."""
    rng = np.random.default_rng(0)
    return np.clip(128 + rng.normal(0, 40, (n, size, size, 3)), 0, 255).astype("uint8")


def right_half_texture_logit(images: np.ndarray) -> np.ndarray:
    """A 'model' whose evidence is the texture of the image-right half only."""
    x = np.asarray(images, "float64")
    return x[:, :, x.shape[2] // 2:, 0].std(axis=(1, 2))


def test_occlusion_faithfulness_rewards_a_map_on_the_model_s_evidence():
    images = textured_images(3)
    maps = np.stack([one_hot(3, 6), one_hot(3, 0), one_hot(3, 3)])  # right, left, no side
    calls = []

    def logits(batch):
        calls.append(len(batch))
        return right_half_texture_logit(batch)

    occ = hm.occlusion_logits(images, maps, logits, batch_size=1)
    assert list(occ["favoured"]) == ["right", "left", None]
    np.testing.assert_array_equal(hm.faithful(occ)[:2], [1.0, 0.0])
    assert np.isnan(hm.faithful(occ)[2])
    assert calls == [2, 2]  # the film with no favoured side is not run
    assert hm.occlusion_faithfulness(images, maps, right_half_texture_logit) == pytest.approx(0.5)


def test_occlusion_in_the_lungs_blurs_only_the_lung_in_that_half():
    images = textured_images(1)
    lungs = np.zeros((224, 224), bool)
    lungs[40:180, 20:90] = True
    lungs[40:180, 134:204] = True
    region = hm.half_region("right", 224, 224, lungs)
    assert region.sum() == 140 * 70 and not region[:, :112].any()
    blurred = hm.blur_region(images[0], region, sigma=16)
    assert np.array_equal(blurred[~region], images[0][~region])
    assert blurred[region].std() < images[0][region].std() / 3
    occ = hm.occlusion_logits(images, one_hot(3, 6)[None], right_half_texture_logit, lungs[None])
    assert hm.faithful(occ)[0] == 1.0


# --- everything for a split -------------------------------------------------------------------

def block_means(images: np.ndarray) -> np.ndarray:
    """A 'model' whose map follows the film: the film's brightness on a 7x7 grid."""
    x = np.asarray(images, "float64")[..., 0]
    return x.reshape(len(x), 7, 32, 7, 32).mean(axis=(2, 4))


def fixed_map(images: np.ndarray) -> np.ndarray:
    """A 'model' whose map is the same on every film, heavier on the image right."""
    return np.repeat((blob(5) + 0.1 * one_hot(1, 5))[None], len(images), axis=0)


def test_measure_tells_a_map_that_follows_the_film_from_a_side_prior():
    images = textured_images(6)
    labels = np.array([1, 1, 1, 1, 0, 0])
    follows = hm.measure(images, labels, block_means, right_half_texture_logit,
                         members={"prior": fixed_map})
    prior = hm.measure(images, labels, fixed_map, right_half_texture_logit,
                       lung_masks=np.ones((6, 224, 224), bool))
    p, q = follows["PNEUMONIA"], prior["PNEUMONIA"]
    assert p["n"] == 4 and follows["NORMAL"]["n"] == 2
    assert p["flip_equivariance"]["mean"] == pytest.approx(1.0)
    assert q["flip_equivariance"]["mean"] < 0.5
    assert q["unflipped_correlation"]["mean"] == pytest.approx(1.0)
    assert q["side_preference"]["right_share"] == 1.0
    assert q["side_preference_of_mirrored_films"]["right_share"] == 1.0
    assert q["side_preference_in_lungs_of_mirrored_films"]["right_share"] == 1.0
    assert q["diversity"]["mean"] == pytest.approx(1.0)
    assert p["diversity"]["mean"] < 0.7  # four noise maps: about 1/sqrt(4) each
    assert q["commonest_peak_cell"] == {"row": 1, "column": 5, "n": 4}
    assert q["occlusion_faithfulness"]["mean"] == 1.0  # it favours the side of its evidence
    assert q["occlusion_faithfulness_lungs"]["n"] == 4
    assert set(p["member_agreement"]["prior"]) == {"image_halves"}
    assert "member_agreement" not in q


# --- the evaluation CLI and the benchmark, with the bundled model on a tiny folder ------------

def test_evaluate_heatmaps_only_replaces_one_entry_of_metrics(kaggle_folder, bundled_model_dir,
                                                               tmp_path):
    import json
    import shutil

    from pneumo import config
    from pneumo.cli import evaluate

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(bundled_model_dir / config.MODEL_FILE, weights / config.MODEL_FILE)
    before = json.loads((bundled_model_dir / config.METRICS_FILE).read_text())
    before["heatmaps"].pop(evaluate.FOLLOW_KEY, None)
    (weights / config.METRICS_FILE).write_text(json.dumps(before))
    evaluate.main(["--data", str(kaggle_folder), "--weights", str(weights), "--heatmaps-only",
                   "--lungs", str(tmp_path / "no_lungs.keras")])
    after = json.loads((weights / config.METRICS_FILE).read_text())
    follow = after["heatmaps"].pop(evaluate.FOLLOW_KEY)
    assert after == before  # nothing else changed
    assert follow["method"] == "Grad-CAM" and follow["lung_masks"].startswith("none")
    test = follow["test"]
    assert test["PNEUMONIA"]["n"] == 6 and test["NORMAL"]["n"] == 6
    assert "side_preference_in_lungs" not in test["PNEUMONIA"]
    assert set(follow["val"]) <= {"PNEUMONIA", "NORMAL"}
    after["heatmaps"][evaluate.FOLLOW_KEY] = follow
    assert "Grad-CAM test PNEUMONIA (n=6)" in evaluate.format_table(after)
    assert sorted(p.name for p in weights.iterdir()) == [config.METRICS_FILE, config.MODEL_FILE]


def test_evaluate_heatmaps_only_needs_an_existing_metrics_file(kaggle_folder, bundled_model_dir,
                                                               tmp_path, capsys):
    import shutil

    from pneumo import config
    from pneumo.cli import evaluate

    shutil.copy(bundled_model_dir / config.MODEL_FILE, tmp_path / config.MODEL_FILE)
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(kaggle_folder), "--weights", str(tmp_path), "--heatmaps-only"])
    assert "run the whole evaluation first" in capsys.readouterr().err


def test_benchmark_driver_for_another_model_file(kaggle_folder, bundled_model_dir, tmp_path):
    import importlib.util
    import json
    import shutil

    from conftest import ROOT

    from pneumo import config

    spec = importlib.util.spec_from_file_location("heatmaps_bench", ROOT / "benchmarks" / "heatmaps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    other = tmp_path / "other.keras"
    shutil.copy(bundled_model_dir / config.MODEL_FILE, other)
    with pytest.raises(SystemExit):  # not the bundled model: --out is required
        bench.main(["--data", str(kaggle_folder), "--model", str(other)])
    out = tmp_path / "result.json"
    bench.main(["--data", str(kaggle_folder), "--model", str(other), "--split", "test",
                "--member", str(bundled_model_dir / config.MODEL_FILE), "--lungs", "none",
                "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["heatmaps"]) >= {"test", "method"} and "val" not in result["heatmaps"]
    pneumonia = result["heatmaps"]["test"]["PNEUMONIA"]
    agreement = pneumonia["member_agreement"][str(bundled_model_dir / config.MODEL_FILE)]
    if agreement["image_halves"]["n"]:  # the same weights agree with themselves on every film
        assert agreement["image_halves"]["mean"] == 1.0
    assert result["model_sha256"] == next(iter(result["members"].values()))
