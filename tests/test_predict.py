"""The batch CLI (``python -m pneumo.predict``): CSV rows, probabilities, errors, overlays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, png_bytes, synthetic_xray
from PIL import Image

from pneumo import predict

GOOD = ("a.png", "b.jpg", "scans/c.png", "scans/deeper/d.JPEG")
BAD = "scans/broken.png"


def _image_folder(root: Path) -> Path:
    """Four readable test-made X-rays (two in subfolders), a corrupt PNG and a non-image."""
    for seed, name in enumerate(GOOD):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = synthetic_xray(256 + 32 * seed, seed)
        path.write_bytes(jpeg_bytes(img) if name.lower().endswith((".jpg", ".jpeg")) else png_bytes(img))
    (root / BAD).write_bytes(png_bytes(synthetic_xray(256, 9))[:200])  # truncated
    (root / "scans" / "readme.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, bundled_model_dir):
    """One CLI run over the folder, in batches of 2, with overlays."""
    tmp = tmp_path_factory.mktemp("predict")
    folder = _image_folder(tmp / "xrays")
    out, cams = tmp / "results.csv", tmp / "cams"
    code = predict.main([str(folder), "--out", str(out), "--cams", str(cams),
                         "--threshold", "0.5", "--batch-size", "2"])
    with out.open(newline="", encoding="utf-8") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    return code, folder, rows, cams


def test_csv_has_a_row_per_image_and_errors_only_for_the_bad_file(cli_run):
    code, _, rows, _ = cli_run
    assert code == 0
    assert set(rows) == {*GOOD, BAD}
    assert list(next(iter(rows.values()))) == list(predict.COLUMNS)
    bad = rows[BAD]
    assert bad["error"] and bad["probability_pneumonia"] == "" and bad["decision"] == predict.NOT_READ
    for name in GOOD:
        row = rows[name]
        assert row["error"] == ""
        p = float(row["probability_pneumonia"])
        assert 0.0 <= p <= 1.0
        assert row["decision"] == ("PNEUMONIA" if p >= 0.5 else "NORMAL")
        assert float(row["threshold"]) == 0.5


def test_probabilities_match_the_predictor(cli_run):
    from pneumo.images import load_image
    from pneumo.model import Predictor, load_model

    _, folder, rows, _ = cli_run
    images = np.stack([load_image(folder / name) for name in GOOD])
    expected = Predictor(load_model()).predict(images)
    got = np.array([float(rows[name]["probability_pneumonia"]) for name in GOOD])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_cams_are_written_for_readable_images(cli_run):
    _, folder, rows, cams = cli_run
    written = sorted(p.relative_to(cams).as_posix() for p in cams.rglob("*.png"))
    assert written == sorted(name + predict.CAM_SUFFIX for name in GOOD)
    for name in GOOD:
        assert Path(rows[name]["cam_file"]) == cams / (name + predict.CAM_SUFFIX)
        with Image.open(cams / (name + predict.CAM_SUFFIX)) as overlay, \
                Image.open(folder / name) as original:
            assert overlay.format == "PNG" and overlay.mode == "RGB"
            assert overlay.size == original.size
    assert rows[BAD]["cam_file"] == ""


def test_default_threshold_is_the_recommended_one(tmp_path):
    assert predict.default_threshold(tmp_path) == 0.5
    (tmp_path / "metrics.json").write_text(json.dumps({"thresholds": {"recommended": 0.61234}}))
    assert predict.default_threshold(tmp_path) == 0.612


def test_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    assert predict.main([str(tmp_path), "--out", str(tmp_path / "out.csv")]) == 1
    assert "No supported images" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
