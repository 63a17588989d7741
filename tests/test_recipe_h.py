"""Issue #25's recipe H records (``benchmarks/recipe_h/seed*.json``): each seed's verdict follows
from its validation figures under the rule declared before the runs."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT

FOLDER = ROOT / "benchmarks" / "recipe_h"
RECORDS = sorted([*FOLDER.glob("seed*.json"), *FOLDER.glob("hp_seed*.json")])


def _script(name: str):
    """A script of benchmarks/recipe_h/ loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"recipe_h_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _judge():
    return _script("judge")


def test_the_rule_can_fail():
    judge = _judge()
    good = {"flip_equivariance": 0.93, "unflipped_correlation": 0.64, "val_log_loss": 0.097,
            "side_preference": 0.66}
    assert all(judge.conditions(good).values())
    assert not judge.conditions({**good, "side_preference": 0.96})["side_preference"]  # run 3's
    assert not judge.conditions({**good, "flip_equivariance": 0.55})["flip_equivariance"]
    assert not judge.conditions({**good, "flip_equivariance": 0.85,
                                 "unflipped_correlation": 0.9})["flip_equivariance"]
    assert not judge.conditions({**good, "val_log_loss": 0.11})["log_loss"]


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_each_seed_verdict_follows_from_its_figures(path):
    judge = _judge()
    record = json.loads(path.read_text())
    rule = judge.RULES[record.get("recipe_key", "H")]
    assert record["rule"] == rule  # the declared rule, unchanged
    met = judge.conditions(record["validation_pneumonia"], rule)
    assert record["conditions"] == met and record["meets_rule"] == all(met.values())
    assert record["seed"] in rule["seeds"]


def _ensemble_judge():
    return _script("ensemble_judge")


def test_the_ensemble_rule_can_reject():
    judge = _ensemble_judge()
    members = [{"val_log_loss": 0.10, "reencoding_abs_dp_p95_mean": 0.05, "flip_equivariance": 0.9},
               {"val_log_loss": 0.12, "reencoding_abs_dp_p95_mean": 0.07, "flip_equivariance": 0.8}]
    good = {"val_log_loss": 0.105, "reencoding_abs_dp_p95_mean": 0.055, "flip_equivariance": 0.86}
    assert not any(judge.conditions(good, members).values())
    assert judge.conditions({**good, "val_log_loss": 0.111}, members)["val_log_loss"]
    assert judge.conditions({**good, "reencoding_abs_dp_p95_mean": 0.061},
                            members)["reencoding_abs_dp_p95_mean"]
    assert judge.conditions({**good, "flip_equivariance": 0.84}, members)["flip_equivariance"]


@pytest.mark.skipif(not (FOLDER / "ensemble.json").exists(), reason="the ensemble is not judged yet")
def test_the_ensemble_verdict_follows_from_its_figures():
    judge = _ensemble_judge()
    record = json.loads((FOLDER / "ensemble.json").read_text())
    worse = judge.conditions(record["ensemble"], list(record["members"].values()))
    assert record["ensemble_worse_than_members_mean"] == worse
    assert record["rejected"] == any(worse.values())


MEMBERS = sorted(FOLDER.glob("member_seed*.json"))


@pytest.mark.parametrize("path", MEMBERS, ids=[p.stem for p in MEMBERS])
def test_each_member_record_is_a_declared_seed_with_its_first_epoch_flag(path):
    from pneumo import config

    record = json.loads(path.read_text())
    assert record["seed"] in (*config.ENSEMBLE_SEEDS, *config.ENSEMBLE_SPARE_SEEDS)
    first = record["training"]["checkpoint"]["best_epoch"] == config.ENSEMBLE_FAILED_BEST_EPOCH
    assert record["checkpoint_at_first_epoch"] == first
    assert 0 < record["validation"]["val_log_loss"] < 1
