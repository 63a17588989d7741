"""pneumo.evaluation.robustness: the re-encodings, the summary, and the bundled model's invariance to them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import jpeg_bytes, synthetic_xray
from PIL import Image

from pneumo import config
from pneumo.evaluation.robustness import (
    TRANSFORMS,
    compare,
    crop_5pct,
    crop_box,
    jpeg_q50,
    jpeg_q95,
    png_2x,
    probabilities,
    summarize,
)
from pneumo.io.images import decode_image, load_image


@pytest.fixture(scope="module")
def original() -> bytes:
    """Like the shared copies: a 224 px RGB JPEG, quality 75."""
    grey = synthetic_xray(224, seed=3)
    return jpeg_bytes(np.repeat(grey[..., None], 3, axis=-1), quality=75)


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_png_2x_is_the_bicubic_upsample_stored_losslessly(original):
    img = _open(png_2x(original))
    assert img.format == "PNG" and img.size == (448, 448) and img.mode == "RGB"
    expected = Image.fromarray(decode_image(original).rgb).resize((448, 448), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(expected))


@pytest.mark.parametrize(("transform", "quality"), [(jpeg_q95, 95), (jpeg_q50, 50)])
def test_jpeg_reencodings_keep_the_size_and_roughly_the_pixels(original, transform, quality):
    data = transform(original)
    img = _open(data)
    assert img.format == "JPEG" and img.size == (224, 224)
    source = decode_image(original).rgb.astype(int)
    error = np.abs(np.asarray(img.convert("RGB"), dtype=int) - source).mean()
    assert 0 < error < (1.5 if quality == 95 else 4)
    assert len(jpeg_q50(original)) < len(jpeg_q95(original))


def test_crop_5pct_cuts_five_percent_off_each_side_losslessly(original):
    img = _open(crop_5pct(original))
    assert img.format == "PNG" and img.size == (202, 202)  # 224 - 2 x round(11.2)
    np.testing.assert_array_equal(np.asarray(img), decode_image(original).rgb[11:213, 11:213])
    assert crop_box(300, 200) == (15, 10, 285, 190)
    assert crop_box(1000, 800) == (50, 40, 950, 760)


def test_every_reencoding_reads_through_the_app_path(original):
    assert set(TRANSFORMS) == {"png_2x", "jpeg_q95", "jpeg_q50", "crop_5pct"}
    for transform in TRANSFORMS.values():
        assert load_image(transform(original)).shape == (224, 224, 3)


def test_summarize():
    base = np.array([0.1, 0.5, 0.49, 0.9, 0.7])
    changed = np.array([0.1, 0.49, 0.5, 0.95, 0.6])
    s = summarize(base, changed, threshold=0.5)
    assert s["n"] == 5 and s["flips"] == 2 and s["flip_share"] == pytest.approx(0.4)
    assert s["abs_dp_max"] == pytest.approx(0.1)
    assert s["abs_dp_p50"] == pytest.approx(0.01)
    assert s["abs_dp_p95"] == pytest.approx(np.percentile([0, 0.01, 0.01, 0.05, 0.1], 95))
    assert s["mean_dp"] == pytest.approx((0 - 0.01 + 0.01 + 0.05 - 0.1) / 5)
    assert summarize(base, base, 0.5)["flips"] == 0
    with pytest.raises(ValueError):
        summarize(base, changed[:3], 0.5)


class _Brightness:
    """A stand-in predictor: the mean pixel value / 255."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype="float32").mean(axis=(1, 2, 3)) / 255


def test_compare_with_a_stand_in_predictor(original):
    files = [original, jpeg_bytes(synthetic_xray(300, seed=4), quality=75)]
    base = probabilities(_Brightness(), files, chunk=1)
    assert base.shape == (2,)
    np.testing.assert_allclose(base, [load_image(f).mean() / 255 for f in files], rtol=1e-6)
    result = compare(_Brightness(), files, threshold=0.5)
    assert set(result) == set(TRANSFORMS)
    for figures in result.values():
        assert figures["n"] == 2 and figures["abs_dp_p95"] < 0.05


@pytest.fixture(scope="module")
def reencoded(shared_data, bundled_model_dir) -> tuple[float, dict]:
    """The bundled model on all 624 official test images and their re-encodings, through the
    app's serving runtime (OpenVINO where installed: the five-member model in a third of Keras'
    time; it equals Keras within 1e-5, tests/test_runtime.py).

    All of them, as the issue's target is stated: on a sample of 100 a single image near the
    threshold is already 1 % of the decisions (run 3 flipped 2 of 100 such, 3 of 624 in all)."""
    from pneumo.data.splits import read_split
    from pneumo.evaluation.artifacts import recommended_threshold
    from pneumo.models.explain import pixel_batch
    from pneumo.models.runtime import load_explainer

    class Served:
        """``predict`` as :class:`pneumo.models.classifier.Predictor` has it, from the runtime."""

        def __init__(self):
            self.explainer = load_explainer()

        def predict(self, images: np.ndarray) -> np.ndarray:
            return self.explainer.forward(pixel_batch(images))[0]

    picks = read_split(shared_data, "test")
    threshold = recommended_threshold(bundled_model_dir)
    result = compare(Served(), [s.path.read_bytes() for s in picks], threshold)
    report = "; ".join(f"{name}: {r['flips']}/{r['n']} flips, |dp| p95 {r['abs_dp_p95']:.3f} "
                       f"max {r['abs_dp_max']:.3f}" for name, r in result.items())
    print(f"threshold {threshold}: {report}")
    return threshold, result


@pytest.mark.shared_data
def test_lossless_and_high_quality_copies_give_the_same_answer(reencoded):
    """Issue 9 item 5 target, met for these two: the same pixels as a 2x lossless PNG, or as a
    JPEG of quality 95, flip <= 1 % of the decisions and move |dp| p95 <= 0.05."""
    _, result = reencoded
    for name in ("png_2x", "jpeg_q95"):
        r = result[name]
        assert r["flip_share"] <= config.ROBUSTNESS_MAX_FLIP_SHARE, (name, r)
        assert r["abs_dp_p95"] <= config.ROBUSTNESS_MAX_ABS_DP_P95, (name, r)


@pytest.mark.shared_data
def test_lossy_and_cropped_copies_do_not_regress(reencoded):
    """JPEG quality 50 and a 5 % border crop: the issue's target (<= 1 % flips, |dp| p95 <= 0.05)
    is NOT met yet (benchmarks/robustness_results.json and the README give the figures). This
    guards what was reached: the first model, which read the film, moved |dp| p95 by 0.34 and
    0.47 and flipped 6 % and 9 % of decisions; the re-trained one must stay far below that."""
    _, result = reencoded
    for name in ("jpeg_q50", "crop_5pct"):
        r = result[name]
        assert r["flip_share"] <= config.ROBUSTNESS_REGRESSION_FLIP_SHARE, (name, r)
        assert r["abs_dp_p95"] <= config.ROBUSTNESS_REGRESSION_ABS_DP_P95, (name, r)
