"""The README's rejected runs (``benchmarks/tried/run*.json``): each decision follows from its
own validation figures and the rule it was held to (written down before its results)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from pneumo.evaluation.robustness import TRANSFORMS

TRIED = sorted((ROOT / "benchmarks" / "tried").glob("run*.json"))


def test_there_are_recorded_runs():
    assert len(TRIED) >= 4
    bars = {json.dumps(json.loads(p.read_text())["rule"], sort_keys=True) for p in TRIED}
    assert len(bars) == 1  # all held to the same bar (run 3's validation figures)


@pytest.mark.parametrize("path", TRIED, ids=[p.stem for p in TRIED])
def test_each_decision_follows_from_its_validation_figures(path):
    run = json.loads(path.read_text())
    val, rule = run["validation"], run["rule"]
    p95 = [t["abs_dp_p95"] for t in val["reencodings"].values()]
    assert sorted(val["reencodings"]) == sorted(TRANSFORMS)
    assert val["mean_abs_dp_p95"] == pytest.approx(np.mean(p95))
    passes = val["mean_abs_dp_p95"] < rule["max_val_mean_abs_dp_p95"] and \
        val["log_loss"] <= rule["max_val_log_loss"]
    assert run["decision"] == ("kept" if passes else "not kept")


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "tried").glob("*.json")),
                         ids=lambda p: p.stem)
def test_each_record_gives_its_test_figures_as_plain_numbers(path):
    record = json.loads(path.read_text())
    test = record.get("test_computed_after_the_decision") or record["test"]
    figures = {**test["at_recommended"], "auc": test["auc"], "ece": test["ece"]}
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in figures.values()), figures
    assert sorted(test["reencodings"]) == sorted(TRANSFORMS)
