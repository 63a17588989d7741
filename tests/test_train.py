"""Training and evaluation CLIs end to end on a tiny test-made Kaggle folder."""

from __future__ import annotations

import csv
import json

import pytest

from pneumo import config


def test_train_resume_and_evaluate(kaggle_folder, tmp_path):
    from pneumo.cli import evaluate, train

    if not config.weights_path(config.LUNG_MODEL_FILE).exists():
        pytest.skip("training draws lung masks with weights/lungs.keras, which is absent")

    out = tmp_path / "weights"
    common = ["--data", str(kaggle_folder), "--out", str(out), "--batch-size", "4",
              "--head-epochs", "2", "--verbose", "0", "--seed", "7"]
    train.main(common + ["--epochs", "1"])
    for name in (config.MODEL_FILE, config.HISTORY_FILE, config.TRAINING_FILE):
        assert (out / name).exists(), name
    train.main(common + ["--epochs", "2", "--resume"])
    with (out / config.HISTORY_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("head", "1"), ("head", "2"), ("finetune", "1"), ("finetune", "2")]
    report = json.loads((out / config.TRAINING_FILE).read_text())
    assert report["finetune_epochs_run"] == 2
    assert report["splits"]["train"]["NORMAL"] + report["splits"]["val"]["NORMAL"] == 6
    assert len(report["data_fingerprint"]) == 64
    assert report["calibration"]["method"] == "platt"
    assert report["checkpoint"]["chosen"] in ("best_epoch", "averaged")
    assert report["config"]["lung_penalty"] == config.LUNG_PENALTY
    assert (report["config"]["seed"], report["config"]["split_seed"]) == (7, config.SEED)
    assert set(rows[0]) >= {"val_loss", "val_outside"}

    evaluate.main(["--data", str(kaggle_folder), "--weights", str(out), "--bootstrap", "50"])
    metrics = json.loads((out / config.METRICS_FILE).read_text())
    assert 0 <= metrics["thresholds"]["recommended"] <= 1
    assert set(metrics["test"]["at_recommended"]) == {
        "auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"}
    with (out / config.TEST_PREDICTIONS_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert (out / "ood.npz").exists()

    # --recalibrate on a folder holding only the model and its record, as a fresh clone's
    # weights/ does (checkpoints/ is not in git): the decoded-image cache is made, not assumed
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in (config.MODEL_FILE, config.TRAINING_FILE):
        (fresh / name).write_bytes((out / name).read_bytes())
    train.main(["--data", str(kaggle_folder), "--out", str(fresh), "--recalibrate", "--verbose", "0"])
    recalibrated = json.loads((fresh / config.TRAINING_FILE).read_text())["calibration"]
    assert recalibrated["previous"] == report["calibration"]
    assert (fresh / "checkpoints" / "arrays.npz").exists()


def test_bernoulli_jsd_against_hand_computed_values():
    import math

    import tensorflow as tf

    from pneumo.cli.train import bernoulli_jsd

    def by_hand(a, b):
        pa, pb = 1 / (1 + math.exp(-a)), 1 / (1 + math.exp(-b))

        def kl(p, q):
            return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        m = (pa + pb) / 2
        return (kl(pa, m) + kl(pb, m)) / 2

    a = tf.constant([0.0, 2.0, -1.0, 3.0])
    b = tf.constant([0.0, 1.0, 1.5, -3.0])
    got = bernoulli_jsd(a, b).numpy()
    want = [by_hand(x, y) for x, y in zip(a.numpy(), b.numpy())]
    assert abs(got[0]) < 1e-7
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-5
    # bounded by log 2 however far apart the logits are (a squared difference is not)
    assert float(bernoulli_jsd(tf.constant([-40.0]), tf.constant([40.0]))[0]) <= math.log(2) + 1e-6


def test_two_view_batches_hold_each_image_twice_as_neighbours():
    import numpy as np

    from pneumo.cli.train import make_dataset

    rng = np.random.default_rng(0)
    n = 6
    images = np.zeros((n, config.IMAGE_SIZE, config.IMAGE_SIZE, 3), "uint8")
    for i in range(n):  # a different flat grey per image, so a view can be told apart
        images[i] = 20 + 35 * i
    masks = np.ones((n, config.IMAGE_SIZE, config.IMAGE_SIZE), "uint8")
    labels = rng.integers(0, 2, n).astype("float32")
    (x, m), y = next(iter(make_dataset(images, masks, labels, batch_size=4, views=2,
                                       mild_second_view=True)))
    assert x.shape[0] == 4 and m.shape[0] == 4
    y, x = y.numpy()[:, 0], x.numpy()
    assert y[0] == y[1] and y[2] == y[3]
    # the second row is the first one mildly re-encoded: nearly the same pixels
    for first in (0, 2):
        assert np.median(np.abs(x[first] - x[first + 1])) < 8
