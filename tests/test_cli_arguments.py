"""Every program that reads a data folder or a model says what is wrong with a wrong one, before any
work and without a traceback."""

from __future__ import annotations

import importlib

import pytest

FOLDER_PROGRAMS = {
    "train": ["--data", "{bad}", "--out", "{out}"],
    "evaluate": ["--data", "{bad}", "--weights", "{out}"],
    "ood": ["--refit", "--data", "{bad}", "--weights", "{out}"],
    "train_quality": ["--data", "{bad}", "--out", "{out}"],
    "train_lungs": ["--data", "{bad}", "--out", "{out}"],
}


@pytest.mark.parametrize("program", sorted(FOLDER_PROGRAMS))
def test_a_wrong_data_folder_is_a_usage_error(program, tmp_path, capsys):
    bad = tmp_path / "not_the_data"
    (bad / "train" / "NORMAL").mkdir(parents=True)  # half a layout: still wrong
    argv = [a.format(bad=bad, out=tmp_path / "out") for a in FOLDER_PROGRAMS[program]]
    module = importlib.import_module(f"pneumo.cli.{program}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m pneumo.{program}: error: {bad}" in err
    assert ("MANIFEST.csv" if program == "train_lungs" else "missing train/PNEUMONIA") in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the check


@pytest.mark.parametrize("program, argv", [
    ("evaluate", ["--weights", "{empty}"]),
    ("ood", ["--refit", "--weights", "{empty}"]),
    ("train", ["--out", "{empty}", "--recalibrate"]),
])
def test_a_missing_model_is_a_usage_error(program, argv, kaggle_folder, tmp_path, capsys):
    empty = tmp_path / "no_model"
    empty.mkdir()
    module = importlib.import_module(f"pneumo.cli.{program}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--data", str(kaggle_folder)] + [a.format(empty=empty) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"No model at {empty / 'pneumo.keras'}" in err
    assert "Traceback" not in err
    assert list(empty.iterdir()) == []
