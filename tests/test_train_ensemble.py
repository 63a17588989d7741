"""``python -m pneumo.train --members K`` / ``--ensemble-of DIR ...`` (issue #25): members trained
member by member with the declared seeds, failed members replaced by spares, members joined into
one calibrated model with a record that lists them. Synthetic member folders keep it fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pneumo import config
from pneumo.evaluation import artifacts

IMAGENET = config.weights_path(config.IMAGENET_NOTOP_FILE)


def _record(seed: int, val_loss: float, best_epoch: int, data: str = "x" * 64,
            epochs_run: int | None = None) -> dict:
    """A member's training.json as pneumo.train writes it (the keys the ensemble reads)."""
    return {
        "model": "EfficientNet-Lite0", "splits": {"train": {"NORMAL": 4, "PNEUMONIA": 4}},
        "patients": {"train": 8, "val": 4}, "head_only_val_auc": 0.9,
        "config": {"seed": seed, "max_finetune_epochs": 6, "early_stopping_patience": 3,
                   "augmentation": "pneumo.data.augment", "lung_penalty": 0.1, "hflip": 0.5},
        "checkpoint": {"chosen": "best_epoch"}, "best_epoch": best_epoch,
        "best_val_loss": val_loss, "best_val_auc": 0.95,
        "finetune_epochs_run": epochs_run if epochs_run is not None else best_epoch + 3,
        "calibration": {"method": "platt", "scale": 1.0, "bias": 0.0,
                        "val_log_loss_original_images": val_loss},
        "duration_minutes": 12.0, "versions": {}, "data_fingerprint": data,
    }


def _write_member(folder: Path, record: dict, model=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model is None:
        (folder / config.MODEL_FILE).write_bytes(b"stand-in")
    else:
        model.save(folder / config.MODEL_FILE)
    artifacts.write_training(record, folder)
    return folder


def test_the_failed_member_rule():
    from pneumo.cli.train import failed_members

    summaries = [{"val_log_loss": v, "best_epoch": e}
                 for v, e in ((0.10, 3), (0.12, 1), (0.11, 4), (0.25, 2), (0.09, 5))]
    reasons = failed_members(summaries)
    assert [r is not None for r in reasons] == [False, True, False, True, False]
    assert "epoch 1" in reasons[1] and "median 0.1100" in reasons[3]


def test_members_are_trained_one_by_one_resumed_and_failed_ones_replaced(tmp_path, monkeypatch):
    """--members 3: seed 1337 finished (skipped), 2027 unfinished (resumed), 3001 new; 3001 ends
    at epoch 1 so the first spare, 3004, replaces it; all of them share OUT's image cache."""
    from pneumo.cli import train

    out = tmp_path / "ensemble"
    _write_member(train.member_folder(out, 1337), _record(1337, 0.10, 3))
    unfinished = train.member_folder(out, 2027)
    _write_member(unfinished, _record(2027, 0.2, 2, epochs_run=2))  # cut short by --max-minutes
    (unfinished / "checkpoints").mkdir()
    (unfinished / "checkpoints" / "state.json").write_text("{}")
    outcome = {2027: (0.11, 4), 3001: (0.12, 1), 3004: (0.09, 5)}
    calls, joined = [], {}

    def fake_train(args):
        calls.append((args.seed, args.resume, args.arrays_dir, args.max_minutes))
        _write_member(args.out, _record(args.seed, *outcome[args.seed]))

    def fake_assemble(args, folders, replaced=None):
        joined.update(folders=folders, replaced=replaced)

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(train, "assemble", fake_assemble)
    train.main(["--data", str(_kaggle_like(tmp_path)), "--out", str(out), "--members", "3",
                "--max-minutes", "20"])
    assert calls == [(2027, True, out, 20.0), (3001, False, out, 20.0), (3004, False, out, 20.0)]
    assert joined["folders"] == [train.member_folder(out, s) for s in (1337, 2027, 3004)]
    assert [(r["seed"], r["replaced_by"]) for r in joined["replaced"]] == [(3001, 3004)]

    calls.clear()  # run again: everything is there, nothing is trained
    train.main(["--out", str(out), "--members", "3", "--data", str(_kaggle_like(tmp_path))])
    assert calls == [] and joined["folders"][-1] == train.member_folder(out, 3004)

    outcome[3005] = (0.10, 1)  # a fourth member fails and the remaining spares fail too
    monkeypatch.setattr(config, "ENSEMBLE_SPARE_SEEDS", (3004, 3005))
    outcome[3002] = (0.10, 1)
    with pytest.raises(SystemExit, match="used up"):
        train.main(["--out", str(out), "--members", "4", "--data", str(_kaggle_like(tmp_path))])


def _kaggle_like(tmp_path: Path) -> Path:
    """An empty Kaggle layout (parse_args checks the folder; the fakes never read it)."""
    root = tmp_path / "chest_xray"
    for split in ("train", "val", "test"):
        for label in config.CLASS_NAMES:
            (root / split / label).mkdir(parents=True, exist_ok=True)
    return root


def test_ensemble_of_joins_trained_members_and_records_them(kaggle_folder, tmp_path):
    if not config.weights_path(config.LUNG_MODEL_FILE).exists():
        pytest.skip("the validation lung masks need weights/lungs.keras, which is absent")
    import keras

    from pneumo.cli import train
    from pneumo.data.splits import fingerprint, load_splits
    from pneumo.models.classifier import build_classifier, load_model, logit_model, set_calibration
    from pneumo.models.ensemble import member_count

    data = fingerprint([s for v in load_splits(kaggle_folder).values() for s in v])
    keras.utils.set_random_seed(3)
    model = build_classifier(IMAGENET)
    logit = model.get_layer(config.LOGIT_LAYER)
    kernel, bias = logit.get_weights()
    folders = []
    for i, (seed, loss, epoch) in enumerate(((1337, 0.10, 3), (2027, 0.30, 4), (3001, 0.12, 1))):
        logit.set_weights([kernel * (1 + 0.5 * i), bias + i])
        set_calibration(model, 0.8 + 0.2 * i, -0.1 * i)
        folders.append(_write_member(tmp_path / f"m{seed}", _record(seed, loss, epoch, data), model))

    out = tmp_path / "ensemble"
    train.main(["--data", str(kaggle_folder), "--out", str(out), "--ensemble-of",
                *map(str, folders)])
    joined = load_model(out / config.MODEL_FILE)
    assert member_count(joined) == 3
    record = json.loads((out / config.TRAINING_FILE).read_text())
    assert [(m["seed"], m["folder"], m["val_log_loss"], m["best_epoch"], m["failed"])
            for m in record["members"]] == [(1337, str(folders[0]), 0.10, 3, False),
                                            (2027, str(folders[1]), 0.30, 4, True),
                                            (3001, str(folders[2]), 0.12, 1, True)]
    assert record["config"]["seeds"] == [1337, 2027, 3001] and record["checkpoint"]["chosen"] == "ensemble"
    assert record["calibration"]["method"] == "platt"
    assert record["sanity_rule_1"]["members_mean"] == pytest.approx(np.mean([0.10, 0.30, 0.12]))
    assert artifacts.read_training(out).kept == "ensemble"
    # the stored calibration is the fitted one, on top of the mean of the members' logits
    x = np.stack([np.full((224, 224, 3), v, "float32") for v in (60.0, 140.0)])
    members = [load_model(f / config.MODEL_FILE) for f in folders]
    mean_logit = np.mean([logit_model(m).predict(x, verbose=0).ravel() for m in members], axis=0)
    a, b = record["calibration"]["scale"], record["calibration"]["bias"]
    np.testing.assert_allclose(joined.predict(x, verbose=0).ravel(),
                               1 / (1 + np.exp(-(a * mean_logit + b))), atol=1e-5)

    other = _write_member(tmp_path / "other", _record(3002, 0.1, 3, "y" * 64), model)
    with pytest.raises(SystemExit, match="other data"):
        train.main(["--data", str(kaggle_folder), "--out", str(tmp_path / "no"), "--ensemble-of",
                    str(folders[0]), str(other)])


@pytest.mark.parametrize("extra, message", [
    (["--members", "1"], "--members takes 2 to 5"),
    (["--members", "6"], "--members takes 2 to 5"),
    (["--members", "2", "--recalibrate"], "three different jobs"),
])
def test_ensemble_arguments_are_checked(extra, message, tmp_path, capsys, monkeypatch):
    from pneumo.cli import train

    monkeypatch.setattr(train, "model_problem", lambda path: None)  # (--recalibrate's own check)
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(_kaggle_like(tmp_path)), "--out", str(tmp_path), *extra])
    assert message in capsys.readouterr().err


def test_ensemble_of_needs_trained_member_folders(tmp_path, capsys):
    from pneumo.cli import train

    empty = tmp_path / "empty"
    empty.mkdir()
    for folders, message in (([empty], "at least two"), ([empty, empty], "has no trained member")):
        with pytest.raises(SystemExit):
            train.parse_args(["--data", str(_kaggle_like(tmp_path)), "--ensemble-of",
                              *map(str, folders)])
        assert message in capsys.readouterr().err


def test_no_member_is_judged_or_joined_while_one_is_unfinished(tmp_path, monkeypatch):
    """A member cut short by --max-minutes (epoch 1 of 6, no early stop) is not failed for its
    first-epoch checkpoint: the run stops, and the next one resumes it."""
    from pneumo.cli import train

    out = tmp_path / "ensemble"
    calls = []

    def fake_train(args):
        calls.append((args.seed, args.resume))
        _write_member(args.out, _record(args.seed, 0.1, 1 if args.seed == 2027 else 3,
                                        epochs_run=1 if args.seed == 2027 else None))
        (args.out / "checkpoints").mkdir(exist_ok=True)
        (args.out / "checkpoints" / "state.json").write_text("{}")

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(train, "assemble", lambda *a, **k: pytest.fail("joined too early"))
    args = ["--data", str(_kaggle_like(tmp_path)), "--out", str(out), "--members", "2"]
    assert train.train_members(train.parse_args(args)) == {"unfinished": [2027]}
    train.main(args)
    assert calls == [(1337, False), (2027, False), (2027, True)]
