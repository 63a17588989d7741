"""The batch CLI (``python -m pneumo.predict``): CSV rows, probabilities, errors, overlays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, png_bytes, synthetic_xray
from PIL import Image

from pneumo import config
from pneumo.cli import predict
from pneumo.evaluation.artifacts import read_training_dict, round_threshold
from pneumo.reading import reader

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
    """One CLI run over the folder, in batches of 2, with overlays, without a lung model."""
    tmp = tmp_path_factory.mktemp("predict")
    folder = _image_folder(tmp / "xrays")
    out, cams = tmp / "results.csv", tmp / "cams"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "load_segmenter", lambda: None)
        mp.setenv("PNEUMO_AUDIT_URL", f"sqlite:///{tmp / 'audit.sqlite3'}")  # this run's own
        code = predict.main([str(folder), "--out", str(out), "--cams", str(cams),
                             "--threshold", "0.5", "--batch-size", "2"])
    with out.open(newline="", encoding="utf-8") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    return code, folder, rows, cams


def test_each_reading_writes_one_audit_record_without_its_name(cli_run):
    """Issue #24: the batch command's readings are in the audit trail: one record per readable
    file, the operating-system user and host, the file's SHA-256, never its name."""
    import getpass
    import hashlib

    from pneumo import audit

    _, folder, rows, _ = cli_run
    db = folder.parent / "audit.sqlite3"
    records = audit.AuditStore(f"sqlite:///{db}").records()
    digests = {hashlib.sha256((folder / name).read_bytes()).hexdigest(): name for name in GOOD}
    assert sorted(r["digest"] for r in records) == sorted(digests)
    for record in records:
        row = rows[digests[record["digest"]]]
        assert record["action"] == audit.READING and record["subject"] == f"os:{getpass.getuser()}"
        assert record["trust"] == row["trust"] and record["decision"] == row["decision"]
        assert record["probability"] == pytest.approx(float(row["probability_pneumonia"]), abs=1e-6)
    stored = db.read_bytes()
    assert not any(Path(name).name.encode() in stored for name in (*GOOD, BAD))


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
        if row["trust"] == "trusted":
            assert row["decision"] == ("PNEUMONIA" if p >= 0.5 else "NORMAL")
        else:  # issue #20: a class name only for a trusted reading; the reason says why not
            assert row["decision"] == reader.DECISION_WORDS[row["trust"]] and row["reason"]
        assert float(row["threshold"]) == 0.5


def test_probabilities_match_the_predictor(cli_run):
    from pneumo.io.images import load_image
    from pneumo.models.classifier import Predictor, load_model

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


def test_no_lung_model_leaves_the_lung_columns_empty(cli_run):
    _, _, rows, _ = cli_run
    assert all(row["gradcam_in_lungs"] == "" and row["lung_warning"] == "" for row in rows.values())


LUNGLESS = "lungless.png"


class _HalfLungs:
    """Stand-in segmenter: the top half is "lung" (both image halves alike, as a pair of lungs;
    a mask on one side only is "one lung field"); an image with a white top-left corner has no
    plausible lungs (a 2 % mask)."""

    @staticmethod
    def mask(image) -> np.ndarray:
        mask = np.zeros(image.shape[:2], bool)
        if image[:8, :8].min() >= 250:
            mask[:30, :30] = True
        else:
            mask[: image.shape[0] // 2, :] = True
        return mask

    def fields(self, images):
        from pneumo.models.lungs import LungFields

        out = []
        for image in np.asarray(images):
            m = self.mask(image)
            out.append(LungFields(mask=m, area=float(m.mean()), components=1))
        return out


@pytest.fixture(scope="module")
def cli_lungs_run(tmp_path_factory, bundled_model_dir):
    tmp = tmp_path_factory.mktemp("predict_lungs")
    folder = tmp / "xrays"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        (folder / name).write_bytes(png_bytes(synthetic_xray(256, seed)))
    odd = synthetic_xray(256, 5)
    odd[:40, :40] = 255
    (folder / LUNGLESS).write_bytes(png_bytes(odd))
    out = tmp / "results.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "load_segmenter", _HalfLungs)
        assert predict.main([str(folder), "--out", str(out), "--batch-size", "2"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        return folder, {row["file"]: row for row in csv.DictReader(f)}


def test_cli_reports_the_gradcam_share_inside_the_lungs(cli_lungs_run):
    from pneumo.io.images import load_image
    from pneumo.models.classifier import load_model
    from pneumo.models.explain import METHODS, CamExplainer
    from pneumo.models.lungs import NO_LUNGS_WARNING, heatmap_in_lungs

    folder, rows = cli_lungs_run
    explainer = CamExplainer(load_model())
    for name in ("a.png", "b.png"):
        image = load_image(folder / name)
        cam = explainer.explain(image[None])[0].cams[METHODS[0]]
        share = heatmap_in_lungs(cam, _HalfLungs.mask(image))[0]
        assert float(rows[name]["gradcam_in_lungs"]) == pytest.approx(share, abs=2e-4)
        assert rows[name]["lung_warning"] == ""
    odd = rows[LUNGLESS]
    assert odd["lung_warning"] == NO_LUNGS_WARNING
    assert odd["gradcam_in_lungs"] == "" and odd["probability_pneumonia"] != ""
    assert NO_LUNGS_WARNING not in odd["ood_warning"]


def test_load_segmenter_absent_or_broken_gives_none(monkeypatch, tmp_path, capsys):
    from pneumo import config

    monkeypatch.setattr(config, "WEIGHTS_DIR", tmp_path)
    assert predict.load_segmenter() is None
    assert "no lungs.keras" in capsys.readouterr().err
    (tmp_path / config.LUNG_MODEL_FILE).write_bytes(b"not a keras file")
    assert predict.load_segmenter() is None
    assert "could not load" in capsys.readouterr().err


# --- image quality: the quality column, --auto-correct ---

def _marked(width: int, height: int, seed: int) -> np.ndarray:
    """A test-made X-ray, ``height`` x ``width``, with a white top-left corner."""
    img = synthetic_xray(max(width, height), seed)[:height, :width].copy()
    img[:40, :40] = 255
    return img


class _CornerChecker:
    """Stand-in quality checker: ``rot90`` when the bottom-left corner is white (a marked upright
    image turned anticlockwise); resolution by the real rule."""

    available = True
    notice = None

    def check(self, images, sizes):
        from pneumo.models import quality

        return [quality.report_for([quality.ROT90] if im[-8:, :8].min() >= 250 else [], im, size)
                for im, size in zip(images, sizes)]


@pytest.fixture(scope="module")
def quality_runs(tmp_path_factory, bundled_model_dir):
    """The same folder read twice with the stand-in checker: as found, and with --auto-correct."""
    tmp = tmp_path_factory.mktemp("predict_quality")
    folder = tmp / "xrays"
    folder.mkdir()
    upright = _marked(300, 260, 1)
    (folder / "up.png").write_bytes(png_bytes(upright))
    (folder / "turned.png").write_bytes(png_bytes(np.ascontiguousarray(np.rot90(upright))))
    (folder / "small.png").write_bytes(png_bytes(synthetic_xray(100, 2)))
    out = {}
    for flag in ("", "--auto-correct"):
        csv_path, cams = tmp / f"results{flag}.csv", tmp / f"cams{flag}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(predict, "load_segmenter", lambda: None)
            mp.setattr(predict, "load_quality_checker", _CornerChecker)
            args = [str(folder), "--out", str(csv_path), "--cams", str(cams), "--batch-size", "2"]
            assert predict.main(args + ([flag] if flag else [])) == 0
        with csv_path.open(newline="", encoding="utf-8") as f:
            out[flag or "as found"] = (list(csv.DictReader(f)), cams)
    return folder, out


def test_csv_keeps_its_columns_and_adds_quality_and_corrected(quality_runs):
    _, out = quality_runs
    rows, _ = out["as found"]
    assert list(rows[0]) == list(predict.COLUMNS)
    # issue #20 added trust, reason and reason_code after the decision, older_score at the end;
    # issue #25 an ensemble's vote after it (empty and False for one model)
    assert predict.COLUMNS[:13] == ("file", "probability_pneumonia", "decision", "trust", "reason",
                                    "reason_code", "threshold", "gradcam_in_lungs", "ood_warning",
                                    "lung_warning", "error", "notes", "cam_file")
    assert predict.COLUMNS[13:] == ("quality", "corrected", "calibration", "bundled_probability",
                                    "older_score", "members_pneumonia", "members_disagree")
    members = len(read_training_dict().get("members") or [])
    votes = [(r["members_pneumonia"], r["members_disagree"]) for r in rows if r["probability_pneumonia"]]
    assert votes
    if not members:
        assert votes == [("", "False")] * len(votes)
    for count, disagree in votes if members else ():  # "k of K", a 3-2 (or closer) vote disagrees
        k, of, total = count.split()
        assert of == "of" and int(total) == members and 0 <= int(k) <= members
        assert disagree == str(min(int(k), members - int(k)) >= config.MEMBERS_DISAGREE_MINORITY)


def test_quality_column_and_auto_correct(quality_runs):
    from pneumo.io.images import load_image
    from pneumo.models import quality
    from pneumo.models.classifier import Predictor, load_model

    folder, out = quality_runs
    found = {r["file"]: r for r in out["as found"][0]}
    fixed = {r["file"]: r for r in out["--auto-correct"][0]}
    assert found["turned.png"]["quality"] == "rot90" and found["turned.png"]["corrected"] == ""
    assert found["small.png"]["quality"] == "low_resolution"
    assert found["up.png"]["quality"] == "" and found["up.png"]["corrected"] == ""

    predictor = Predictor(load_model())
    turned = load_image(folder / "turned.png")
    as_found, corrected = predictor.predict(np.stack([turned, quality.correct(turned, "rot90")]))
    assert float(found["turned.png"]["probability_pneumonia"]) == pytest.approx(as_found, abs=1e-4)
    assert float(fixed["turned.png"]["probability_pneumonia"]) == pytest.approx(corrected, abs=1e-4)
    assert abs(as_found - corrected) > 1e-3  # the two readings do differ
    assert fixed["turned.png"]["corrected"] == "rot90" and fixed["turned.png"]["quality"] == "rot90"
    assert quality.correction_note(["rot90"]) in fixed["turned.png"]["notes"]
    # the overlay of the corrected reading is drawn on the image turned back (300 wide, 260 high)
    with Image.open(fixed["turned.png"]["cam_file"]) as img:
        assert img.size == (300, 260)
    with Image.open(found["turned.png"]["cam_file"]) as img:
        assert img.size == (260, 300)
    # nothing to correct: the same row either way
    for name in ("up.png", "small.png"):
        assert {k: v for k, v in fixed[name].items() if k != "cam_file"} == {
            k: v for k, v in found[name].items() if k != "cam_file"}
    assert fixed["small.png"]["corrected"] == ""


def test_summary_counts_quality_findings():
    rows = [{"error": "", "decision": "NORMAL", "ood_warning": "", "quality": "rot90",
             "corrected": "rot90"},
            {"error": "", "decision": "NORMAL", "ood_warning": "", "quality": "low_resolution",
             "corrected": ""},
            {"error": "", "decision": "NORMAL", "ood_warning": "", "quality": "", "corrected": ""}]
    line = predict.summary(rows, 0.5, Path("r.csv"))
    assert "2 with image-quality findings (1 read corrected)" in line
    assert "image-quality" not in predict.summary(rows[2:], 0.5, Path("r.csv"))


def test_load_quality_checker_absent_or_broken_says_so(monkeypatch, tmp_path, capsys):
    from pneumo import config

    monkeypatch.setattr(config, "WEIGHTS_DIR", tmp_path)
    checker = predict.load_quality_checker()
    assert not checker.available and "is missing" in capsys.readouterr().err
    (tmp_path / config.QUALITY_MODEL_FILE).write_bytes(b"not a keras file")
    checker = predict.load_quality_checker()
    assert not checker.available and "could not be used" in capsys.readouterr().err
    # without its network the checker still checks the resolution
    reports = checker.check(np.zeros((1, 224, 224, 3), np.uint8), [(100, 100)])
    assert reports[0].low_resolution


def test_a_site_calibration_is_applied_and_named(tmp_path, bundled_model_dir, monkeypatch):
    """With a site file for this model, the CSV carries the site's probabilities and threshold,
    names the calibration, and keeps the model's own probability beside it."""
    from pneumo.reading import site

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40), np.ones(60)].astype(int)
    bundled = np.clip(np.where(labels == 1, rng.uniform(0.5, 1.0, 100), rng.uniform(0.0, 0.7, 100)),
                      0.001, 0.999)
    cal = site.build("Test site", labels, bundled, site.model_fingerprint(), created="2026-11-26")
    site.save(cal, Path(site.site_dir()))
    folder = _image_folder(tmp_path / "xrays")
    out = tmp_path / "site.csv"
    monkeypatch.setattr(predict, "load_segmenter", lambda: None)
    assert predict.main([str(folder), "--out", str(out), "--batch-size", "2"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["probability_pneumonia"]]
    assert len(rows) == len(GOOD)
    for row in rows:
        assert row["calibration"] == "Test site (2026-11-26)"
        expected = float(cal.apply(float(row["bundled_probability"])))
        assert float(row["probability_pneumonia"]) == pytest.approx(expected, abs=2e-6)
        assert float(row["threshold"]) == round_threshold(cal.recommended)


def test_without_a_site_file_the_calibration_columns_are_empty(cli_run):
    _, _, rows, _ = cli_run
    assert all(r["calibration"] == "" and r["bundled_probability"] == "" for r in rows.values())
