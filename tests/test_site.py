"""Site calibration: the math by hand, the site file, the CLI end to end, the app, the benchmark."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import sys
import zipfile
from pathlib import Path

import imagegen
import numpy as np
import pytest
from conftest import ROOT, jpeg_bytes, png_bytes, run_app, synthetic_xray
from conftest import explorer_caption_counts as _caption_counts

from pneumo import config
from pneumo.evaluation import metrics as m
from pneumo.reading import site

SITE = "Test Site"
DATE = "2025-01-02"


# --- the calibration math -------------------------------------------------------------------

def _data(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, n)
    y = (rng.random(n) < site.sigmoid(0.6 * z - 1.0)).astype(int)
    return z, y


def test_prior_strength_zero_is_the_plain_platt_fit():
    z, y = _data()
    assert site.fit_platt_prior(z, y, (0.0, 0.0)) == pytest.approx(m.fit_platt(z, y), abs=1e-9)
    p = site.sigmoid(z)
    assert site.fit_site(y, p, strength=0.0) == pytest.approx(m.fit_platt(site.logit(p), y),
                                                              abs=1e-9)


def test_the_map_fit_by_hand():
    """Four images at logit 0, three with pneumonia. Platt's targets are 4/5 and 1/3; the scale
    cannot move (every z is 0), and the bias solves 4 sigmoid(b) - (3 * 4/5 + 1/3) + lb * b = 0.
    With lb = (2.4 + 1/3 - 8/3) / log 2 the answer is b = log 2 (sigmoid = 2/3)."""
    lb = (2.4 + 1 / 3 - 8 / 3) / math.log(2)
    a, b = site.fit_platt_prior([0, 0, 0, 0], [1, 1, 1, 0], precision=(5.0, lb))
    assert a == pytest.approx(1.0, abs=1e-9)
    assert b == pytest.approx(math.log(2), abs=1e-7)
    # without the prior the bias goes all the way to the targets' mean: logit(2.7333 / 4)
    _, b0 = site.fit_platt_prior([0, 0, 0, 0], [1, 1, 1, 0])
    assert b0 == pytest.approx(math.log(0.68333333 / 0.31666667), abs=1e-6)
    assert 0 < b < b0  # the prior pulls towards 0


def test_the_fit_is_a_stationary_point_of_the_penalised_loss():
    z, y = _data(1, 80)
    precision = site.prior_precision(1.0, (0.5, 2.0))
    assert precision == pytest.approx((4.0, 0.25))
    a, b = site.fit_platt_prior(z, y, precision)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    p = site.sigmoid(a * z + b)
    assert np.sum((p - t) * z) + precision[0] * (a - 1) == pytest.approx(0, abs=1e-6)
    assert np.sum(p - t) + precision[1] * b == pytest.approx(0, abs=1e-6)


def test_a_strong_prior_keeps_the_bundled_calibration_and_small_samples_move_less():
    z, y = _data(2, 400)
    assert site.fit_platt_prior(z, y, (1e9, 1e9)) == pytest.approx((1.0, 0.0), abs=1e-6)
    p = site.sigmoid(z)
    full = site.fit_site(y, p)
    few = site.fit_site(y[:20], p[:20])
    plain_few = site.fit_site(y[:20], p[:20], strength=0.0)
    la, lb = site.prior_precision()

    def penalty(ab):  # the prior's distance from the bundled identity; the MAP fit's is smaller
        return la * (ab[0] - 1) ** 2 + lb * ab[1] ** 2

    assert penalty(few) < penalty(plain_few)
    assert full[1] == pytest.approx(-1.0, abs=0.4) and full[0] == pytest.approx(0.6, abs=0.15)


def test_apply_by_hand():
    assert site.apply_calibration(0.8, 2.0, 0.0) == pytest.approx(16 / 17)  # odds 4 -> 16
    assert site.apply_calibration(0.5, 3.0, math.log(3)) == pytest.approx(0.75)
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    assert site.apply_calibration(p, 1.0, 0.0) == pytest.approx(
        np.clip(p, config.SITE_LOGIT_EPS, 1 - config.SITE_LOGIT_EPS))


def _sample(seed: int = 0, n_normal: int = 40, n_pneumonia: int = 60):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_pneumonia, int)]
    p = np.r_[rng.beta(2, 5, n_normal), rng.beta(6, 2, n_pneumonia)]
    return y, p


def test_build_proposes_thresholds_by_the_bundled_rules():
    y, p = _sample()
    cal = site.build(SITE, y, p, "f" * 64, created=DATE)
    labels, q = cal.sample()
    assert sorted(q) == pytest.approx(sorted(np.round(cal.apply(np.round(p, 6)), 6)))
    for name, target in (("recommended", config.RECOMMENDED_SENSITIVITY_TARGET),
                         ("high_sensitivity", config.HIGH_SENSITIVITY_TARGET)):
        t = cal.thresholds[name]
        assert m.metrics_at(labels, q, t)["sensitivity"] >= target
        above = q[(labels == 1) & (q >= t)].min()  # the lowest pneumonia score still caught
        assert m.metrics_at(labels, q, above + 1e-9)["sensitivity"] < target  # highest such
    assert cal.high_sensitivity <= cal.recommended
    assert cal.counts == {"NORMAL": 40, "PNEUMONIA": 60, "unreadable": 0, "left_out": 0}
    assert cal.banner == f"Calibrated for {SITE} on 100 images, {DATE}"


def test_build_refuses_too_few_images_or_a_backwards_model():
    y, p = _sample(n_normal=config.SITE_MIN_PER_CLASS - 1)
    with pytest.raises(site.SiteSampleError, match="at least"):
        site.build(SITE, y, p, "f" * 64)
    y, p = _sample(n_normal=200, n_pneumonia=200)
    with pytest.raises(site.SiteSampleError, match="ranks NORMAL images above PNEUMONIA"):
        site.build(SITE, 1 - y, p, "f" * 64)
    with pytest.raises(site.SiteSampleError, match="name"):
        site.build("  ", *_sample(), "f" * 64)


# --- the site file ----------------------------------------------------------------------------

@pytest.fixture
def fake_model(tmp_path) -> Path:
    path = tmp_path / "model.keras"
    path.write_bytes(b"model weights v1")
    return path


def test_site_file_round_trip_and_fingerprint(tmp_path, fake_model):
    cal = site.build(SITE, *_sample(), site.model_fingerprint(fake_model), created=DATE)
    path = site.save(cal, tmp_path / "site")
    status = site.load(tmp_path / "site", fake_model)
    assert status.message is None and status.calibration == cal
    assert cal.model_fingerprint == hashlib.sha256(b"model weights v1").hexdigest()

    # another model: ignored, with a message saying so
    fake_model.write_bytes(b"model weights v2")
    status = site.load(tmp_path / "site", fake_model)
    assert status.calibration is None
    assert "made for another model" in status.message and SITE in status.message
    assert path.exists()  # ignored, not deleted


def test_no_site_file_is_silent_and_a_broken_one_is_explained(tmp_path, fake_model):
    assert site.load(tmp_path / "none", fake_model) == site.SiteStatus(
        None, None, tmp_path / "none" / config.SITE_FILE)
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / config.SITE_FILE).write_text("{not json")
    status = site.load(folder, fake_model)
    assert status.calibration is None and "cannot be used" in status.message
    good = site.build(SITE, *_sample(), site.model_fingerprint(fake_model), created=DATE).to_json()
    for key, value, words in ((("calibration", "scale"), -0.5, "scale"),
                              (("thresholds", "recommended"), 1.5, "recommended"),
                              (("counts", "NORMAL"), 3, "counts"),
                              (("format",), 99, "format")):
        bad = json.loads(json.dumps(good))
        target = bad
        for k in key[:-1]:
            target = target[k]
        target[key[-1]] = value
        (folder / config.SITE_FILE).write_text(json.dumps(bad))
        status = site.load(folder, fake_model)
        assert status.calibration is None and words in status.message, status.message


def test_site_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path / "x"))
    assert site.site_file() == tmp_path / "x" / config.SITE_FILE
    monkeypatch.delenv(config.SITE_DIR_ENV)
    assert site.site_dir() == config.SITE_DIR_DEFAULT
    assert not str(config.SITE_DIR_DEFAULT).startswith(str(config.WEIGHTS_DIR))


def test_zip_items_find_both_classes_at_any_depth():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("sample/NORMAL/a.png", b"1")
        z.writestr("sample/normal/sub/b.jpeg", b"2")
        z.writestr("sample/PNEUMONIA/c.dcm", b"3")
        z.writestr("__MACOSX/sample/NORMAL/._a.png", b"x")
        z.writestr("sample/PNEUMONIA/notes.txt", b"x")
        z.writestr("sample/other/d.png", b"x")
    items = site.zip_items(buf.getvalue())
    assert sorted((label, name) for label, name, _ in items) == [
        (0, "sample/NORMAL/a.png"), (0, "sample/normal/sub/b.jpeg"), (1, "sample/PNEUMONIA/c.dcm")]
    assert sorted(loader() for _, _, loader in items) == [b"1", b"2", b"3"]
    with pytest.raises(site.SiteSampleError, match="not a readable zip"):
        site.zip_items(b"PK not really")


# --- the CLI end to end -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(bundled_model_dir):
    from pneumo.models.classifier import Predictor, load_model

    return Predictor(load_model())


def _bundled(predictor, data: bytes) -> float:
    from pneumo.io.images import load_image

    return float(predictor.predict(load_image(data)[None])[0])


@pytest.fixture(scope="module")
def made_sample(predictor) -> dict[str, list[tuple[str, bytes, float]]]:
    """Test-made X-rays (PNG, JPEG and one DICOM carrying patient fields), scored by the bundled
    model; the lower-scored half becomes NORMAL and the upper half PNEUMONIA, so the model ranks
    this made "site" the right way round."""
    files = []
    for seed in range(14):
        img = synthetic_xray(240 + 9 * seed, 100 + seed)
        img = np.clip(img.astype(int) + 12 * (seed % 5) - 20, 0, 255).astype("uint8")
        if seed == 3:
            name, data = f"case{seed}.dcm", imagegen.dicom(img)
        elif seed % 2:
            name, data = f"case{seed}.jpg", jpeg_bytes(img)
        else:
            name, data = f"case{seed}.png", png_bytes(img)
        files.append((name, data, _bundled(predictor, data)))
    files.sort(key=lambda f: f[2])
    return {"NORMAL": files[:7], "PNEUMONIA": files[7:]}


def _write_sample(root: Path, sample: dict) -> Path:
    for cls, files in sample.items():
        (root / cls).mkdir(parents=True)
        for name, data, _ in files:
            (root / cls / name).write_bytes(data)
    (root / "PNEUMONIA" / "broken.png").write_bytes(png_bytes(synthetic_xray(200, 1))[:150])
    (root / "NORMAL" / "readme.txt").write_text("not an image")
    return root


@pytest.fixture
def every_image_in_scope(monkeypatch):
    """Synthetic test images are no chest X-rays of children to the scope checks: these CLI
    tests of the fit itself let every readable image through (the screen has its own test)."""
    monkeypatch.setattr(site, "trust_screen", lambda *a, **k: (lambda readings: [None] * len(readings)))


def test_cli_leaves_images_pneumo_would_not_answer_about_out_of_the_fit(tmp_path, made_sample,
                                                                          capsys, monkeypatch):
    from pneumo.cli import calibrate

    def screen(*a, **k):
        return lambda readings: ["Out of scope: older" if r.name.endswith("0.png") else None
                                 for r in readings]

    monkeypatch.setattr(site, "trust_screen", screen)
    folder = _write_sample(tmp_path / "sample", made_sample)
    out = tmp_path / "site-out"
    assert calibrate.main(["--data", str(folder), "--site", "St Elsewhere",
                           "--site-dir", str(out), "--batch-size", "4"]) == 0
    left = sorted(p.name for p in folder.rglob("*0.png"))
    cal = site.read(site.site_file(out))
    assert cal.counts["left_out"] == len(left) > 0
    err = capsys.readouterr().err
    assert all("left out" in line for line in err.splitlines() if "older" in line)
    assert f"{len(left)} image(s) left out of the fit" in err


def test_cli_writes_a_site_file_of_numbers_only(tmp_path, made_sample, capsys, every_image_in_scope,
                                                monkeypatch):
    from pneumo import audit
    from pneumo.cli import calibrate

    folder = _write_sample(tmp_path / "St Elsewhere sample", made_sample)
    out = tmp_path / "site-out"
    monkeypatch.setenv(config.AUDIT_URL_ENV, f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    assert calibrate.main(["--data", str(folder), "--site", "St Elsewhere",
                           "--site-dir", str(out), "--batch-size", "4"]) == 0
    # the change is in the audit trail (#24): one record, the OS user, the new numbers, no names
    (record,) = audit.AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite3'}").records()
    assert record["action"] == audit.SITE_CALIBRATION and record["subject"].startswith("os:")
    assert record["old_value"] is None and json.loads(record["new_value"])["site"] == "St Elsewhere"
    assert json.loads(record["new_value"])["set_by"] == "command line"
    assert "case1" not in record["new_value"]
    printed = capsys.readouterr()
    assert "skipped PNEUMONIA/broken.png" in printed.err
    assert "Calibrated for St Elsewhere on 14 images" in printed.out

    text = (out / config.SITE_FILE).read_text()
    for files in made_sample.values():
        for name, _, _ in files:
            assert name not in text and Path(name).stem not in text
    assert "broken" not in text and "St Elsewhere sample" not in text
    assert not any(value in text for value in imagegen.PHI_VALUES)

    status = site.load(out)
    cal = status.calibration
    assert status.message is None and cal is not None
    assert cal.counts == {"NORMAL": 7, "PNEUMONIA": 7, "unreadable": 1, "left_out": 0}
    assert cal.model_fingerprint == site.model_fingerprint()
    expected = sorted(p for files in made_sample.values() for _, _, p in files)
    assert sorted(cal.bundled_probabilities) == pytest.approx(expected, abs=2e-6)
    labels, probs = cal.sample()
    assert probs == pytest.approx(np.round(cal.apply(np.array(cal.bundled_probabilities)), 6),
                                  abs=1e-6)
    a, b = site.fit_site(labels, cal.bundled_probabilities)
    assert (cal.scale, cal.bias) == pytest.approx((a, b))
    assert m.metrics_at(labels, probs, cal.thresholds["recommended"])["sensitivity"] >= 0.95
    assert "small" in printed.out  # 7 images a class


def test_cli_without_the_class_folders_or_with_too_few_images_writes_nothing(
        tmp_path, capsys, made_sample, every_image_in_scope):
    from pneumo.cli import calibrate

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png_bytes(synthetic_xray(200, 2)))
    out = tmp_path / "site-out"
    assert calibrate.main(["--data", str(tmp_path / "flat"), "--site", "X",
                           "--site-dir", str(out)]) == 1
    assert "NORMAL/ or PNEUMONIA/" in capsys.readouterr().err
    few = {"NORMAL": made_sample["NORMAL"][:3], "PNEUMONIA": made_sample["PNEUMONIA"]}
    folder = _write_sample(tmp_path / "few", few)
    assert calibrate.main(["--data", str(folder), "--site", "X", "--site-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "3 readable NORMAL image(s)" in err and "skipped PNEUMONIA/broken.png" in err
    assert not (out / config.SITE_FILE).exists()


# --- the app ----------------------------------------------------------------------------------

EXPLORER_PAGE = "pages/threshold_explorer.py"
CARD_PAGE = "pages/model_card.py"


def _app():
    return run_app()


@pytest.fixture
def site_file(tmp_path, monkeypatch, bundled_model_dir) -> site.SiteCalibration:
    """A site file for the bundled model in a temporary site folder the app is pointed at."""
    cal = site.build(SITE, *_sample(), site.model_fingerprint(), created=DATE)
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path / "site"))
    site.save(cal, tmp_path / "site")
    return cal


def _banner(at) -> list[str]:
    return [i.value for i in at.info if i.value.startswith("Calibrated for")]



def test_every_page_says_which_site_and_the_default_threshold_is_the_sites(site_file):
    at = _app()
    assert _banner(at) == [f"Calibrated for {SITE} on 100 images, {DATE}. Probabilities and the "
                           "default threshold are this site's."]
    assert at.session_state["threshold"] == pytest.approx(site_file.recommended)
    for page in (EXPLORER_PAGE, CARD_PAGE):
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert len(_banner(at)) == 1, page


def test_explorer_site_view_and_test_view_on_the_site_scale(site_file):
    from pneumo.evaluation.artifacts import read_predictions

    at = _app()
    at.switch_page(EXPLORER_PAGE).run()
    radio = at.radio[0]
    site_view = f"This site: {SITE} (100 images)"
    assert radio.options == ["Official test set (624 images)", "Validation split", site_view]
    labels, probs = site_file.sample()
    test = read_predictions("test")
    for t in (0.3, 0.7):
        at.session_state["threshold"] = t
        radio.set_value(site_view).run()
        c = m.confusion(labels, probs, t)
        assert _caption_counts(at) == (c["fn"], c["fp"])
        assert any("in-sample" in x.value for x in at.caption)
        assert any(f"{SITE}'s recommended and high-sensitivity thresholds were chosen on its own "
                   "sample of 100 images" in x.value for x in at.caption)
        assert len(at.get("plotly_chart")) == 6  # no subtype chart for the site sample
        at.radio[0].set_value("Official test set (624 images)").run()
        c = m.confusion(test.label, site_file.apply(test.probability), t)
        assert _caption_counts(at) == (c["fn"], c["fp"])
        assert len(at.get("plotly_chart")) == 7
    next(b for b in at.button if b.label.startswith("Site recommended")).click().run()
    assert at.session_state["threshold"] == pytest.approx(site_file.recommended)


def test_model_card_shows_the_site_reliability_beside_the_test_one(site_file):
    at = _app()
    at.switch_page(CARD_PAGE).run()
    assert not at.exception, at.exception
    specs = [c.proto.spec for c in at.get("plotly_chart")]
    assert any(f"Reliability, {SITE}, site-calibrated" in s for s in specs)
    assert any("Reliability, official test" in s for s in specs)
    assert site.model_card_note(site_file) in [c.value for c in at.caption]
    assert not any(s.label == "Site name" for s in at.text_input)  # in-app calibration is off


def test_a_site_file_for_another_model_is_ignored_with_a_message(tmp_path, monkeypatch,
                                                                  bundled_model_dir):
    from pneumo.evaluation.artifacts import recommended_threshold

    cal = site.build(SITE, *_sample(), "ab" * 32, created=DATE)
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path / "site"))
    site.save(cal, tmp_path / "site")
    at = _app()
    assert _banner(at) == []
    assert any("made for another model" in w.value for w in at.warning)
    assert at.session_state["threshold"] == pytest.approx(recommended_threshold())
    at.switch_page(EXPLORER_PAGE).run()
    assert len(at.radio[0].options) == 2


def test_read_page_shows_the_site_calibrated_probability(site_file, predictor, monkeypatch):
    from pneumo.app import ui
    from pneumo.models.quality import QualityChecker
    from pneumo.reading import wording

    # a synthetic image is no subject for the scope checks; this test is about the probability
    monkeypatch.setattr(ui, "scope_check", lambda: None)
    monkeypatch.setattr(ui, "ood_detector", lambda: None)
    monkeypatch.setattr(ui, "quality_checker", lambda: QualityChecker())
    data = png_bytes(synthetic_xray(300, 41))
    p = _bundled(predictor, data)
    at = _app()
    at.file_uploader[0].set_value(("s.png", data, "image/png")).run()
    assert not at.exception, at.exception
    shown = [x.value for x in at.metric if x.label == "Probability of pneumonia"]
    q = site_file.apply(p)
    assert shown == [wording.probability_text(q)]
    captions = [c.value for c in at.caption]
    note = next(c for c in captions if c.startswith(f"Calibrated for {SITE};"))
    assert note.startswith(f"Calibrated for {SITE}; the model's own probability: "
                           f"{wording.probability_text(p)}.")
    # the threshold in use is the site's recommended one: the card says what that means (#21)
    assert f"{SITE}'s recommended threshold ({wording.percent(round(site_file.recommended, 3))})" in note
    labels, probs = site_file.sample()
    assert wording.evidence_line(q, probs, labels, source="site-sample") in captions


def _sample_zip(made_sample) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for cls, files in made_sample.items():
            for name, data, _ in files:
                z.writestr(f"local/{cls}/{name}", data)
        z.writestr("local/NORMAL/bad.jpg", b"\xff\xd8 not a jpeg")
    return buf.getvalue()


def _calibrate_in_app(at, name: str, data: bytes):
    at.text_input[0].set_value(name).run()
    at.file_uploader[0].set_value(("sample.zip", data, "application/zip")).run()
    next(b for b in at.button if b.label == "Calibrate for this site").click().run()
    assert not at.exception, at.exception


def test_in_app_calibration_refuses_a_small_sample_in_plain_sight(
        tmp_path, monkeypatch, made_sample, bundled_model_dir, every_image_in_scope):
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path / "site"))
    monkeypatch.setenv(config.SITE_CALIBRATION_IN_APP_ENV, "1")
    at = _app()
    at.switch_page(CARD_PAGE).run()
    _calibrate_in_app(at, "Ward 7", _sample_zip(made_sample))
    assert site.load().calibration is None and not site.site_file().exists()
    errors = [e.value for e in at.error]
    assert any(e.startswith("No site calibration written.") and
               f"at least {config.SITE_SMALL_PER_CLASS} of each" in e for e in errors), errors


def test_in_app_calibration_writes_asks_before_replacing_and_removes(
        tmp_path, monkeypatch, made_sample, bundled_model_dir, every_image_in_scope):
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path / "site"))
    monkeypatch.setenv(config.SITE_CALIBRATION_IN_APP_ENV, "1")
    monkeypatch.setattr(site, "acceptance_problem", lambda calibration: None)  # 14 images
    at = _app()
    at.switch_page(CARD_PAGE).run()
    assert _banner(at) == []
    data = _sample_zip(made_sample)
    _calibrate_in_app(at, "Ward 7", data)
    cal = site.load().calibration
    assert cal is not None and cal.site == "Ward 7" and cal.set_by == "this server"
    assert cal.counts == {"NORMAL": 7, "PNEUMONIA": 7, "unreadable": 1, "left_out": 0}
    assert "bad.jpg" not in site.site_file().read_text()
    assert _banner(at) == [f"{cal.banner}. Probabilities and the default threshold are this "
                           "site's."]
    assert at.session_state["threshold"] == pytest.approx(cal.recommended)
    assert any("Written to" in s.value for s in at.success)
    assert any("In use: " in i.value and "by this server" in i.value for i in at.info)
    # a second calibration is not written until the user confirms the replacement
    _calibrate_in_app(at, "Ward 8", data)
    assert site.load().calibration.site == "Ward 7"
    assert any("Replace the calibration in use" in w.value for w in at.warning)
    next(b for b in at.button if b.label == "Replace it").click().run()
    assert site.load().calibration.site == "Ward 8"
    # and it can be removed, after a confirmation
    next(t for t in at.toggle if t.label == "Remove the site calibration").set_value(True).run()
    assert site.load().calibration is not None
    next(b for b in at.button if b.label == "Yes, remove it").click().run()
    assert not at.exception, at.exception
    assert site.load().calibration is None and not site.site_file().exists()


def test_acceptance_refuses_small_samples_and_calibrations_that_make_things_worse():
    rng = np.random.default_rng(3)
    n = 400
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p).astype(int)  # the bundled calibration is already right
    right = site.build("A", y, p, "0" * 64)
    ece = site.cross_fitted_ece(right.labels, right.bundled_probabilities)
    assert set(ece) == {"site", "bundled"}
    # overconfident bundled probabilities at a site where pneumonia is rarer: a refit helps
    q = 1 / (1 + np.exp(-3 * np.log(p / (1 - p)) - 1.5))
    skewed = site.build("B", y, q, "0" * 64)
    ece_skewed = site.cross_fitted_ece(skewed.labels, skewed.bundled_probabilities)
    assert ece_skewed["site"] < ece_skewed["bundled"]
    assert site.acceptance_problem(skewed) is None
    if ece["site"] > ece["bundled"]:
        assert "less reliable" in site.acceptance_problem(right)
    small = site.build("C", y[:60], q[:60], "0" * 64)
    assert "at least" in site.acceptance_problem(small)


# --- the benchmark's committed figures --------------------------------------------------------

RESULTS = ROOT / "benchmarks" / "site_calibration_results.json"


def _benchmark(monkeypatch):
    spec = importlib.util.spec_from_file_location("site_calibration_bench",
                                                  ROOT / "benchmarks" / "site_calibration.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_committed_cross_fitting_figures_reproduce(monkeypatch):
    predictions = config.weights_path(config.TEST_PREDICTIONS_FILE)
    if not RESULTS.exists():
        pytest.skip(f"no {RESULTS.name}: run `python benchmarks/site_calibration.py`")
    if not predictions.exists():
        pytest.skip(f"no {predictions}: run `python -m pneumo.evaluate --data PATH`")
    bench = _benchmark(monkeypatch)
    committed = json.loads(RESULTS.read_text())
    assert committed["inputs"]["predictions_sha256"] == bench.sha256_of(predictions), (
        f"{RESULTS.name} was made from another {predictions.name}: re-run "
        "`python benchmarks/site_calibration.py`")
    settings = committed["settings"]
    assert settings["prior_sd"] == list(config.SITE_PRIOR_SD)
    assert settings["prior_strength"] == config.SITE_PRIOR_STRENGTH
    data = bench.load(predictions)
    folds = bench.patient_folds(data["patient"], data["label"], settings["seed"])
    assert [int(np.sum(folds == k)) for k in (0, 1)] == committed["folds"]["images"]
    again = bench.crossfit(data, folds, committed["inputs"]["bundled_recommended_threshold"],
                           samples=20)
    for fit in ("site", "bundled"):
        for stat in ("ece", "accuracy", "sensitivity", "specificity"):
            assert again["pooled"][fit][stat]["value"] == pytest.approx(
                committed["crossfit_half"]["pooled"][fit][stat]["value"], abs=1e-9), (fit, stat)
    n = bench.TARGETS["sample_size"]
    runs = bench.size_runs(data, folds, n, settings["draws"], settings["seed"])
    spread = bench.spread(runs["prior"])
    for stat in ("ece", "accuracy", "sensitivity"):
        assert spread[stat]["mean"] == pytest.approx(
            committed["sample_size"][str(n)]["site"][stat]["mean"], abs=1e-9)
    assert committed["targets"]["site"]["ece"]["met"] == (
        spread["ece"]["mean"] <= bench.TARGETS["ece_max"])
