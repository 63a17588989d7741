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
              "--head-epochs", "2", "--verbose", "0"]
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
