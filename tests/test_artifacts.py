"""The records in ``weights/``: readers that must tolerate what an older or partial run left."""

from __future__ import annotations

import json

import pytest

from pneumo import config
from pneumo.evaluation import artifacts


def test_ood_figures_are_read_from_a_partial_metrics_file(tmp_path):
    """``evaluate --keep-ood`` carries the OOD section over even when the rest is not parseable."""
    ood = {"test_flag_rate": 0.0, "threshold": 12.5}
    (tmp_path / config.METRICS_FILE).write_text(json.dumps({"thresholds": {"recommended": 0.6}, "ood": ood}))
    assert artifacts.read_ood_figures(tmp_path) == ood


def test_ood_figures_are_empty_without_a_file_or_a_section(tmp_path):
    assert artifacts.read_ood_figures(tmp_path) == {}
    (tmp_path / config.METRICS_FILE).write_text(json.dumps({"thresholds": {"recommended": 0.6}}))
    assert artifacts.read_ood_figures(tmp_path) == {}
    (tmp_path / config.METRICS_FILE).write_text(json.dumps({"ood": "not a section"}))
    assert artifacts.read_ood_figures(tmp_path) == {}


def test_ood_figures_of_the_bundled_metrics_match_the_full_reader():
    if not config.weights_path(config.METRICS_FILE).exists():
        pytest.skip("no bundled metrics.json")
    assert artifacts.read_ood_figures() == artifacts.read_metrics().ood


def test_training_record_names_the_mirror_only_when_training_used_it():
    """The model card's training line comes from here: a recipe with --hflip says so."""
    record = json.loads(config.weights_path(config.TRAINING_FILE).read_text()) \
        if config.weights_path(config.TRAINING_FILE).exists() else None
    if record is None:
        pytest.skip("no bundled training.json")
    record["config"]["hflip"] = 0.5
    assert artifacts.TrainingRecord.from_dict(record).augmentation.endswith(
        "; left-right mirror with probability 0.5")
    record["config"]["hflip"] = 0.0
    assert "mirror" not in artifacts.TrainingRecord.from_dict(record).augmentation
