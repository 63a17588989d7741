"""The model: Lite0 build, ImageNet conversion, calibration, compiled inference, Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_xray

from pneumo import config
from pneumo.models.classifier import (
    Predictor,
    build_classifier,
    build_lite0,
    get_calibration,
    logit_model,
    set_calibration,
)

IMAGENET = config.weights_path(config.IMAGENET_NOTOP_FILE)
REFERENCE_DIR = config.PROJECT_ROOT.parent / "shared" / "pretrained"


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    imgs = [np.repeat(synthetic_xray(224, i)[..., None], 3, -1) for i in range(n - 1)]
    imgs.append(rng.integers(0, 256, (224, 224, 3)).astype("uint8"))
    return np.stack(imgs).astype("float32")


@pytest.fixture(scope="module")
def classifier():
    model = build_classifier(IMAGENET)
    set_calibration(model, 0.8, -0.3)
    return model


def test_lite0_has_no_squeeze_excitation_and_uses_relu6():
    model = build_lite0()
    names = [layer.name for layer in model.layers]
    assert not any("se_" in n for n in names)
    assert model.get_layer("stem_activation").activation.__name__ == "relu6"
    assert model.output.shape[1:] == (7, 7, 1280)


def test_lite_preprocessing_is_minus_127_over_128():
    import keras

    model = build_lite0()
    rescale = next(layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling))
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    x = np.array([[[[0.0, 127.0, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(norm(rescale(x)).numpy().ravel(), (x.ravel() - 127) / 128, atol=1e-6)


@pytest.mark.skipif(not (REFERENCE_DIR / "efficientnet_lite0_imagenet_notop.weights.h5").exists(),
                    reason="reference weights in ../shared/pretrained not found")
def test_committed_imagenet_weights_match_the_reference_copy():
    ours = build_lite0(weights=IMAGENET)
    reference = build_lite0(weights=REFERENCE_DIR / "efficientnet_lite0_imagenet_notop.weights.h5")
    x = _images()
    diff = np.abs(ours.predict(x, verbose=0) - reference.predict(x, verbose=0)).max()
    assert diff <= 1e-5


def test_calibration_is_platt_on_the_logit(classifier):
    assert get_calibration(classifier) == pytest.approx((0.8, -0.3))
    x = _images()
    logit = logit_model(classifier).predict(x, verbose=0).ravel()
    prob = classifier.predict(x, verbose=0).ravel()
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-(0.8 * logit - 0.3))), atol=1e-6)


def test_predictor_matches_keras_predict_for_any_batch_size(classifier):
    x = _images(5)
    predictor = Predictor(classifier)
    expected = classifier.predict(x, verbose=0).ravel()
    np.testing.assert_allclose(predictor.predict(x), expected, atol=1e-5)
    np.testing.assert_allclose(predictor.predict(x, batch_size=2), expected, atol=1e-5)
    np.testing.assert_allclose(predictor.predict(x[0]), expected[:1], atol=1e-5)
    assert predictor._predict.experimental_get_tracing_count() == 1  # no retracing


def test_save_and_load_keeps_calibration(classifier, tmp_path):
    from pneumo.models.classifier import load_model

    path = tmp_path / "m.keras"
    classifier.save(path)
    loaded = load_model(path)
    assert get_calibration(loaded) == pytest.approx((0.8, -0.3))
    x = _images(2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), classifier.predict(x, verbose=0),
                               atol=1e-6)


def test_load_model_says_how_to_get_one(tmp_path):
    from pneumo.models.classifier import load_model

    with pytest.raises(FileNotFoundError, match="pneumo.train"):
        load_model(tmp_path / "missing.keras")


def test_fast_cams_equal_tf_keras_vis(classifier):
    from pneumo.models.explain import METHODS, CamExplainer, library_cams

    x = _images(3)
    explanations = CamExplainer(classifier).explain(x)
    np.testing.assert_allclose([e.probability for e in explanations],
                               classifier.predict(x, verbose=0).ravel(), atol=1e-5)
    for method in METHODS:
        ours = np.stack([e.cams[method] for e in explanations])
        reference = library_cams(classifier, x, method)
        assert ours.shape == reference.shape == (3, 7, 7)
        # maps are min-max normalised to [0, 1]; the library's autodiff and the closed form round
        # differently over 1280 channels in float32 (1.007e-5 seen once), far below 1/255 of a colour
        np.testing.assert_allclose(ours, reference, atol=1e-4)
        assert ours.min() >= 0 and ours.max() <= 1


def _real_xrays(shared_data, n: int = 12) -> np.ndarray:
    from pneumo.io.images import load_image

    files = sorted((shared_data / "test").glob("*/*.jpeg"))[:: max(1, 624 // n)][:n]
    return np.stack([load_image(f.read_bytes()) for f in files]).astype("float32")


def test_forward_pass_cams_equal_tf_keras_vis_on_real_xrays(shared_data, bundled_model_dir):
    """The bundled model on real test X-rays: probability, both maps (1e-5 of tf-keras-vis)
    and the pooled features, all from the one forward pass."""
    import keras

    from pneumo.models.classifier import load_model
    from pneumo.models.ensemble import first_member_pooled
    from pneumo.models.explain import METHODS, CamExplainer, library_cams

    model = load_model(bundled_model_dir / config.MODEL_FILE)
    x = _real_xrays(shared_data)
    explanations = CamExplainer(model).explain(x, batch_size=5)
    np.testing.assert_allclose([e.probability for e in explanations],
                               model.predict(x, verbose=0).ravel(), atol=1e-5)
    for method in METHODS:
        ours = np.stack([e.cams[method] for e in explanations])
        np.testing.assert_allclose(ours, library_cams(model, x, method), atol=1e-5)
    pooled = keras.Model(model.input, first_member_pooled(model)).predict(x, verbose=0)
    np.testing.assert_allclose(np.stack([e.features for e in explanations]), pooled, atol=1e-5)


def test_closed_form_cams_equal_the_gradient_formulas():
    """With a gradient that is the same at every position, the per-channel closed forms give
    what the general Grad-CAM / Grad-CAM++ formulas give (zero, negative and positive weights,
    and a negative calibration scale)."""
    from pneumo.models.explain import (
        Head,
        gradcam_from_features,
        gradcam_from_gradients,
        gradcam_plus_plus_from_features,
        gradcam_plus_plus_from_gradients,
    )

    rng = np.random.default_rng(3)
    features = np.maximum(rng.normal(0.5, 1.0, (4, 7, 7, 64)), 0).astype("float32")
    kernel = rng.normal(0, 0.1, 64).astype("float32")
    kernel[:5] = 0.0
    for scale, bias in ((1.3, -0.2), (-0.7, 0.4)):
        head = Head(kernel, scale, bias)
        gradient = head.gradient(7, 7)
        np.testing.assert_allclose(gradient, kernel * scale / 49, rtol=1e-6)
        grads = np.broadcast_to(gradient, features.shape).astype("float32")
        scores = head.scores(rng.normal(0, 2, 4))
        np.testing.assert_allclose(gradcam_from_features(features, gradient),
                                   gradcam_from_gradients(features, grads), atol=1e-6)
        np.testing.assert_allclose(gradcam_plus_plus_from_features(features, gradient, scores),
                                   gradcam_plus_plus_from_gradients(features, grads, scores),
                                   atol=1e-6)


def test_normalisation_epsilon_is_keras():
    import keras

    from pneumo.models.explain import _EPS

    assert _EPS == keras.backend.epsilon()


def test_head_refuses_a_model_the_closed_form_does_not_fit():
    import keras

    from pneumo.models.explain import Head

    inputs = keras.Input((7, 7, 4))
    x = keras.layers.Activation("relu6", name=config.CAM_LAYER)(inputs)
    x = keras.layers.GlobalMaxPooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(1, name=config.LOGIT_LAYER)(x)
    x = keras.layers.Dense(1, activation="sigmoid", name=config.CALIBRATION_LAYER)(x)
    with pytest.raises(ValueError, match="global average pool"):
        Head.of(keras.Model(inputs, x))


def test_overlay_keeps_image_size_and_opacity_zero_is_identity():
    from pneumo.models.explain import overlay

    rgb = np.repeat(synthetic_xray(300, 1)[..., None], 3, -1)[:, :250]
    cam = np.random.default_rng(0).uniform(size=(7, 7))
    assert overlay(rgb, cam, 0.5).shape == rgb.shape
    np.testing.assert_array_equal(overlay(rgb, cam, 0.0), rgb)
