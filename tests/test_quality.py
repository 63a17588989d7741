"""Image quality check (pneumo.models.quality): transforms, the low-resolution rule, the trained network."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo import config
from pneumo.cli.train_quality import threshold_for
from pneumo.models import quality


@pytest.fixture
def image() -> np.ndarray:
    """A non-square RGB uint8 array with no symmetry, so every transform changes it."""
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("code", quality.CORRECTABLE)
def test_correct_undoes_each_transform_exactly(image, code):
    made = quality.apply(image, code)
    assert made.shape != image.shape or not np.array_equal(made, image)
    fixed = quality.correct(made, code)
    assert fixed.dtype == np.uint8 and fixed.flags.c_contiguous
    np.testing.assert_array_equal(fixed, image)


def test_transform_directions(image):
    """rot90 is the upright image turned anticlockwise (np.rot90), upside_down a vertical flip."""
    np.testing.assert_array_equal(quality.apply(image, quality.ROT90), np.rot90(image))
    np.testing.assert_array_equal(quality.apply(image, quality.ROT270), np.rot90(image, -1))
    np.testing.assert_array_equal(quality.apply(image, quality.ROT180), image[::-1, ::-1])
    np.testing.assert_array_equal(quality.apply(image, quality.UPSIDE_DOWN), image[::-1])
    np.testing.assert_array_equal(quality.apply(image, quality.INVERTED), 255 - image)
    assert not np.array_equal(quality.correct(np.rot90(image), quality.ROT270), image)
    with pytest.raises(ValueError):
        quality.correct(image, quality.LOW_RESOLUTION)


def test_low_resolution_boundary():
    limit = config.QUALITY_MIN_SIDE
    assert quality.is_low_resolution((limit - 1, 2000))
    assert quality.is_low_resolution((2000, limit - 1))
    assert not quality.is_low_resolution((limit, limit))
    assert not quality.is_low_resolution((limit, 3000))


def test_report_low_resolution_note_and_ood_suppression():
    x = np.zeros((224, 224, 3), np.uint8)
    small = quality.report_for([], x, (64, 80))
    assert small.low_resolution and small.codes == [quality.LOW_RESOLUTION]
    assert "80x64" in small.messages[0] and small.corrected is None
    assert quality.suppress_ood_texture(small)
    fine = quality.report_for([], x, (config.QUALITY_MIN_SIDE, 500))
    assert not fine.low_resolution and fine.findings == []
    assert not quality.suppress_ood_texture(fine) and not quality.suppress_ood_texture(None)
    unknown = quality.report_for([], x, None)
    assert not unknown.low_resolution


def test_report_corrects_every_finding(image):
    made = quality.apply(quality.apply(image, quality.ROT90), quality.INVERTED)
    report = quality.report_for([quality.ROT90, quality.INVERTED], made, (1000, 1000))
    assert report.codes == [quality.ROT90, quality.INVERTED]
    assert all(m for m in report.messages)
    np.testing.assert_array_equal(report.corrected, image)


def test_decide_thresholds():
    t = {"orientation": 0.8, "inverted": 0.9}
    assert quality.decide(np.array([0.1, 0.8, 0.05, 0.05, 0.0]), 0.2, t) == [quality.ROT90]
    assert quality.decide(np.array([0.21, 0.79, 0.0, 0.0, 0.0]), 0.2, t) == []
    assert quality.decide(np.array([0.9, 0.0, 0.0, 0.0, 0.1]), 0.9, t) == [quality.INVERTED]
    assert quality.decide(np.array([0.0, 0.0, 0.0, 0.0, 1.0]), 0.95, t) == [
        quality.UPSIDE_DOWN, quality.INVERTED]


def test_threshold_for_keeps_false_warnings_under_target():
    scores = np.linspace(0, 1, 1000)
    t = threshold_for(scores, target=0.01, floor=0.0)
    assert np.mean(scores >= t) <= 0.01 and np.mean(scores >= t - 0.002) > 0.01
    assert threshold_for(np.zeros(100), target=0.005, floor=0.5) == 0.5


def test_checker_without_weights_only_checks_resolution(tmp_path):
    checker = quality.QualityChecker.load(tmp_path)
    assert not checker.available and str(tmp_path) in checker.notice
    x = np.zeros((2, 224, 224, 3), np.uint8)
    reports = checker.check(x, [(100, 300), (1024, 1024)])
    assert reports[0].codes == [quality.LOW_RESOLUTION] and reports[1].findings == []
    with pytest.raises(ValueError):
        checker.check(x, [(100, 100)])


@pytest.fixture(scope="module")
def checker() -> quality.QualityChecker:
    if not config.weights_path(config.QUALITY_MODEL_FILE).exists():
        pytest.skip(f"no quality network at {config.weights_path(config.QUALITY_MODEL_FILE)}")
    return quality.QualityChecker.load()


def test_network_finds_turned_and_inverted_test_images(checker, shared_data):
    from pneumo.data.splits import read_split
    from pneumo.io.images import load_image

    test = read_split(shared_data, "test")
    picked = [s for s in test if s.label == 0][:3] + [s for s in test if s.label == 1][:3]
    originals = np.stack([load_image(s.path) for s in picked])
    sizes = [(1000, 1200)] * len(picked)
    assert all(r.findings == [] for r in checker.check(originals, sizes))
    for code in (quality.ROT90, quality.ROT270, quality.UPSIDE_DOWN, quality.INVERTED):
        made = np.stack([quality.apply(x, code) for x in originals])
        for original, report in zip(originals, checker.check(made, sizes)):
            assert report.codes == [code], (code, report.probabilities)
            np.testing.assert_array_equal(report.corrected, original)


@pytest.mark.parametrize("photometric, inverted", [("MONOCHROME2", True), ("MONOCHROME1", False)])
def test_network_finds_monochrome1_dicom_with_wrong_tag(checker, shared_data, photometric,
                                                        inverted):
    """12-bit MONOCHROME1 pixels (low values white): tagged MONOCHROME2 they decode inverted."""
    import imagegen as gen

    from pneumo.data.splits import read_split
    from pneumo.io.images import decode_image, load_image, to_model_input

    sample = [s for s in read_split(shared_data, "test") if s.label == 1][5]
    grey = load_image(sample.path)[..., 0].astype(np.uint16)
    decoded = decode_image(gen.dicom((255 - grey) * 16, photometric=photometric)).rgb
    report = checker.check(to_model_input(decoded)[None], [decoded.shape[:2]])[0]
    assert report.codes == ([quality.INVERTED] if inverted else []), report.probabilities
