"""Issue #25's ensemble as one model: mean of the members' logits, the members' own calibrated
probabilities, the mean of their maps, the first member's features; Keras, saved and loaded,
and OpenVINO alike."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_xray

from pneumo import config

IMAGENET = config.weights_path(config.IMAGENET_NOTOP_FILE)
CALIBRATIONS = ((0.8, -0.3), (1.7, 0.4), (0.5, 0.9))


def _images(n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    imgs = [np.repeat(synthetic_xray(224, i)[..., None], 3, -1) for i in range(n - 1)]
    imgs.append(rng.integers(0, 256, (224, 224, 3)).astype("uint8"))
    return np.stack(imgs).astype("float32")


@pytest.fixture(scope="module")
def members():
    """Three small members: two with ImageNet backbones, one random, each its own head and
    calibration (full Lite0, built in seconds)."""
    import keras

    from pneumo.models.classifier import build_classifier, set_calibration

    keras.utils.set_random_seed(5)
    out = [build_classifier(IMAGENET), build_classifier(None), build_classifier(IMAGENET)]
    for model, (scale, bias) in zip(out, CALIBRATIONS):
        set_calibration(model, scale, bias)
    return out


@pytest.fixture(scope="module")
def ensemble_path(members, tmp_path_factory):
    """The ensemble with a calibration of its own, saved as a .keras file."""
    from pneumo.models.classifier import set_calibration
    from pneumo.models.ensemble import build_ensemble

    model = build_ensemble(members)
    set_calibration(model, 1.3, -0.2)
    path = tmp_path_factory.mktemp("ensemble") / config.MODEL_FILE
    model.save(path)
    return path


@pytest.fixture(scope="module")
def ensemble(ensemble_path):
    from pneumo.models.classifier import load_model

    return load_model(ensemble_path)  # no custom objects needed


def test_ensemble_logit_is_the_members_mean_and_member_scores_their_calibrated_probabilities(
        members, ensemble):
    import keras

    from pneumo.models.classifier import get_calibration, logit_model
    from pneumo.models.ensemble import is_ensemble, member_count

    assert is_ensemble(ensemble) and member_count(ensemble) == 3
    assert not is_ensemble(members[0]) and member_count(members[0]) == 1
    assert ensemble.get_layer(config.CAM_LAYER).output.shape[1:] == (7, 7, 3 * 1280)
    x = _images()
    own_logits = np.stack([logit_model(m).predict(x, verbose=0).ravel() for m in members])
    mean_logit = logit_model(ensemble).predict(x, verbose=0).ravel()
    np.testing.assert_allclose(mean_logit, own_logits.mean(axis=0), atol=1e-5)
    scores = keras.Model(ensemble.input, ensemble.get_layer(config.MEMBER_SCORES_LAYER).output)
    own_p = np.stack([m.predict(x, verbose=0).ravel() for m in members], axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-scores.predict(x, verbose=0))), own_p, atol=1e-5)
    scale, bias = get_calibration(ensemble)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0).ravel(),
                               1 / (1 + np.exp(-(scale * mean_logit + bias))), atol=1e-6)


def test_ensemble_maps_are_the_mean_of_the_members_own_maps(members, ensemble):
    from pneumo.models.explain import METHODS, CamExplainer, Head

    x = _images()
    ours = CamExplainer(ensemble).explain(x)
    own = [CamExplainer(m).explain(x) for m in members]
    assert CamExplainer(members[0]).head.members == 0 and own[0][0].member_probabilities is None
    for method in METHODS:
        mean_map = np.mean([[e.cams[method] for e in member] for member in own], axis=0)
        np.testing.assert_allclose(np.stack([e.cams[method] for e in ours]), mean_map, atol=1e-5)
    np.testing.assert_allclose(np.stack([e.member_probabilities for e in ours]),
                               np.array([[e.probability for e in member] for member in own]).T,
                               atol=1e-5)
    np.testing.assert_allclose(np.stack([e.features for e in ours]),  # the OOD check's: member 1's
                               np.stack([e.features for e in own[0]]), atol=1e-5)
    np.testing.assert_allclose([e.probability for e in ours],
                               ensemble.predict(x, verbose=0).ravel(), atol=1e-5)
    head = Head.of(ensemble)
    assert head.members == 3 and head.member_kernels.shape == (3, 1280)
    again = Head.from_arrays(head.arrays())
    np.testing.assert_array_equal(again.member_kernels, head.member_kernels)
    np.testing.assert_array_equal(again.member_biases, head.member_biases)
    single = Head.of(members[0])
    assert Head.from_arrays(single.arrays()).member_kernels is None


def test_library_reference_of_an_ensemble_is_the_mean_of_its_members_maps(members, ensemble):
    """tf-keras-vis on each member's own score inside the ensemble gives that member's map, so
    the reference the runtime tests compare with is the declared heat map."""
    from pneumo.models.explain import METHODS, library_cams

    x = _images(2)
    for method in METHODS:
        expected = np.mean([library_cams(m, x, method) for m in members], axis=0)
        np.testing.assert_allclose(library_cams(ensemble, x, method), expected, atol=1e-5)


def test_ood_features_of_an_ensemble_are_its_first_members(members, ensemble):
    from pneumo.models.ood import pooled_features

    x = _images(2).astype("uint8")
    np.testing.assert_allclose(pooled_features(ensemble, x), pooled_features(members[0], x),
                               atol=1e-5)


def test_population_features_of_an_ensemble_are_its_first_members_as_the_reader_sees_them(
        members, ensemble):
    """The population check is fitted on the features the app later scores: an ensemble's first
    member's pooled channels, not all members' side by side."""
    from pneumo.cli.population import pooled
    from pneumo.models.explain import CamExplainer

    x = _images(2).astype("uint8")
    explainer = CamExplainer(ensemble)
    fitted_on = pooled(explainer, x)
    assert fitted_on.shape == (2, 1280)
    np.testing.assert_allclose(fitted_on, pooled(CamExplainer(members[0]), x), atol=1e-5)
    np.testing.assert_allclose(fitted_on, np.stack([e.features for e in explainer.explain(x)]),
                               atol=1e-6)


def test_a_head_that_mixes_the_members_channels_is_refused(members):
    from pneumo.models.ensemble import build_ensemble
    from pneumo.models.explain import Head

    model = build_ensemble(members[:2])
    layer = model.get_layer(config.MEMBER_SCORES_LAYER)
    kernel, bias = layer.get_weights()
    kernel[0, 1] = 0.1  # member 2's score reading member 1's first channel
    layer.set_weights([kernel, bias])
    with pytest.raises(ValueError, match="one member's channels"):
        Head.of(model)


def test_openvino_explainer_of_an_ensemble_equals_keras(ensemble_path, ensemble, tmp_path):
    pytest.importorskip("openvino", reason="openvino not installed")
    from pneumo.models.explain import METHODS, CamExplainer
    from pneumo.models.runtime import load_explainer

    fast = load_explainer(ensemble_path, runtime="openvino", cache_dir=tmp_path)
    assert fast.runtime == "openvino" and fast.head.members == 3
    x = _images()
    ours, reference = fast.explain(x), CamExplainer(ensemble).explain(x)
    np.testing.assert_allclose([e.probability for e in ours],
                               [e.probability for e in reference], atol=1e-5)
    np.testing.assert_allclose(np.stack([e.member_probabilities for e in ours]),
                               np.stack([e.member_probabilities for e in reference]), atol=1e-5)
    np.testing.assert_allclose(np.stack([e.features for e in ours]),
                               np.stack([e.features for e in reference]), atol=1e-4)
    for method in METHODS:
        np.testing.assert_allclose(np.stack([e.cams[method] for e in ours]),
                                   np.stack([e.cams[method] for e in reference]), atol=1e-4)
