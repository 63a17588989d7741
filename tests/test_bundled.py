"""The bundled model and the files derived from it never drift apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumo import config
from pneumo.evaluation import metrics as m
from pneumo.evaluation.artifacts import read_predictions


@pytest.fixture(scope="module")
def committed(bundled_model_dir):
    test_csv = config.weights_path(config.TEST_PREDICTIONS_FILE)
    if not test_csv.exists():
        pytest.skip("no committed test predictions")
    return {
        "test": read_predictions(test_csv),
        "val": read_predictions("val"),
        "metrics": json.loads(config.weights_path(config.METRICS_FILE).read_text()),
    }


def test_model_reproduces_committed_test_predictions(committed, shared_data):
    """Load the committed model, re-read a few shared test images the app's way, compare."""
    from pneumo.io.images import load_image
    from pneumo.models.classifier import Predictor, load_model
    from pneumo.models.explain import CamExplainer

    test = committed["test"]
    picks = np.linspace(0, len(test.filename) - 1, 8).astype(int)
    images = np.stack([
        load_image(shared_data / "test" / test.class_name[i] / test.filename[i]) for i in picks
    ])
    model = load_model()
    expected = test.probability[picks]
    np.testing.assert_allclose(Predictor(model).predict(images), expected, atol=1e-4)
    np.testing.assert_allclose([e.probability for e in CamExplainer(model).explain(images)],
                               expected, atol=1e-4)


def test_committed_metrics_follow_from_committed_predictions(committed):
    test, val, metrics = committed["test"], committed["val"], committed["metrics"]
    assert len(test.label) == 624 and int(test.label.sum()) == 390
    t = metrics["thresholds"]
    assert m.sensitivity_threshold(val.label, val.probability,
                                   config.RECOMMENDED_SENSITIVITY_TARGET) == pytest.approx(
        t["recommended"], abs=1e-3)
    assert m.metrics_at(val.label, val.probability, t["high_sensitivity"])[
        "sensitivity"] >= config.HIGH_SENSITIVITY_TARGET
    at = metrics["test"]["at_recommended"]
    assert at["auc"]["value"] == pytest.approx(m.roc_auc(test.label, test.probability),
                                               abs=1e-6)
    recomputed = m.metrics_at(test.label, test.probability, t["recommended"])
    for name, value in recomputed.items():
        assert at[name]["value"] == pytest.approx(value, abs=1e-9)
        lo, hi = at[name]["ci95"]
        assert lo <= value <= hi


def test_no_test_image_was_used_for_training(committed, shared_data):
    from pneumo.data.splits import load_splits

    training = json.loads(config.weights_path(config.TRAINING_FILE).read_text())
    splits = load_splits(shared_data)
    assert {k: len(v) for k, v in splits.items()} == {
        k: sum(v.values()) for k, v in training["splits"].items()}
    assert not {s.patient for s in splits["val"]} & {s.patient for s in splits["train"]}
