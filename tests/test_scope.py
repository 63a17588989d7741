"""The scope check: DICOM header facts and rules, the pixel population check, one trust state."""

from __future__ import annotations

import imagegen as gen
import numpy as np
import pytest

from pneumo import config
from pneumo.io.header import (
    DECUBITUS,
    FRONTAL,
    LATERAL,
    OBLIQUE,
    HeaderFacts,
    age_from_dates,
    parse_age_string,
)
from pneumo.io.images import decode_image
from pneumo.models.population import PopulationCheck, threshold_for
from pneumo.models.quality import INVERTED, LOW_RESOLUTION, QualityReport
from pneumo.reading import reader, scope, trust


def _header(**tags) -> HeaderFacts:
    """The facts pneumo reads from a DICOM made with these tags (through the real decoder)."""
    return decode_image(gen.dicom(patient=False, extra=tags)).header


@pytest.mark.parametrize(("value", "years"), [
    ("004Y", 4.0), ("018M", 1.5), ("052W", 52 * 7 / 365.25), ("300D", 300 / 365.25),
    ("4Y", 4.0), ("", None), ("abc", None), ("12X", None), (None, None),
])
def test_age_strings(value, years):
    got = parse_age_string(value)
    assert got == pytest.approx(years) if years is not None else got is None


def test_age_from_birth_and_the_first_usable_date():
    assert age_from_dates("20200301", "", "20230301") == pytest.approx(3.0, abs=0.01)
    assert age_from_dates("20200301", "20250301", "20230301") == pytest.approx(5.0, abs=0.01)
    assert age_from_dates("20200301", "") is None
    assert age_from_dates("", "20230301") is None
    assert age_from_dates("20300101", "20200101") is None  # a study before birth is no age


# --- the six header cases of issue #20, each through the real DICOM decoder ---------------------

@pytest.mark.parametrize(("tags", "code"), [
    ({"PatientAge": "034Y"}, scope.HEADER_AGE),  # adult age
    ({"PatientBirthDate": "19800101", "StudyDate": "20200101"}, scope.HEADER_AGE),  # birth date
    ({"PatientAge": "008M"}, scope.HEADER_AGE),  # an infant: under the population too
    ({"PatientAge": "006Y"}, scope.HEADER_AGE),  # the first day of six is outside [1, 6)
    ({"ViewPosition": "LL"}, scope.HEADER_VIEW),  # lateral view
    ({"ViewPosition": "RLO"}, scope.HEADER_VIEW),  # oblique
    ({"BodyPartExamined": "ABDOMEN"}, scope.HEADER_BODY_PART),  # other body part
    ({"Modality": "CT"}, scope.HEADER_MODALITY),  # other modality
    ({"ImageLaterality": "L"}, scope.HEADER_LATERALITY),
    ({}, None),  # no tags: the pixels decide
    ({"PatientAge": "003Y", "ViewPosition": "PA", "BodyPartExamined": "CHEST"}, None),
    ({"PatientAge": "005Y", "BodyPartExamined": "THORAX"}, None),
    ({"BodyPartExamined": "Chest PA"}, None),
    ({"Modality": "SC"}, None),  # a capture of a film: read like a PNG, the pixels decide
    ({"Modality": "OT"}, None),
    ({"PatientBirthDate": "20200101", "StudyDate": "20230615"}, None),  # three and a half
])
def test_header_cases_give_the_right_verdict(tags, code):
    verdict = scope.header_verdict(_header(**tags))
    assert (verdict.code if verdict else None) == code
    if verdict:
        assert verdict.reason.endswith(".") and "034" not in verdict.reason  # no value quoted


def test_view_code_sequence_is_read_when_view_position_is_absent():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10232", "SRT", "latero-medial"
    facts = _header(ViewCodeSequence=[item])
    assert facts.view is None  # "latero-medial" is not "lateral"
    item.CodeMeaning = "lateral"
    assert _header(ViewCodeSequence=[item]).view == LATERAL
    item.CodeMeaning = "postero-anterior"
    assert _header(ViewCodeSequence=[item]).view == FRONTAL


@pytest.mark.parametrize(("position", "view"), [("PA", FRONTAL), ("AP", FRONTAL), ("RL", LATERAL),
                                                ("LLO", OBLIQUE), ("RLD", DECUBITUS), ("XX", None)])
def test_view_positions(position, view):
    assert _header(ViewPosition=position).view == view


def test_png_and_jpeg_have_no_header():
    assert decode_image(gen.encode(gen.chest_like(), "PNG")).header is None


def test_header_values_are_not_kept_beyond_the_facts():
    facts = _header(PatientAge="034Y", PatientBirthDate="19800101", StudyDate="20140101")
    assert set(vars(facts)) == {"age_years", "view", "laterality", "body_part", "modality"}
    assert facts.age_years == pytest.approx(34.0)


@pytest.mark.parametrize("word", ["CHEST", "THORAX", "Chest", "CHEST_PA", "LUNGS", "TORAX", "BRUST"])
def test_vendor_chest_spellings(word):
    assert scope.is_chest(word)


@pytest.mark.parametrize("word", ["ABDOMEN", "SKULL", "HAND", "PELVIS", "KNEE"])
def test_other_body_parts(word):
    assert not scope.is_chest(word)


# --- the pixel population check ---------------------------------------------------------------

def _check(threshold: float = 0.5) -> PopulationCheck:
    d = 4
    return PopulationCheck(np.zeros(d), np.ones(d), np.array([4.0, 0, 0, 0]), 0.0, threshold)


def test_population_score_is_a_probability_rising_with_the_feature():
    check = _check()
    scores = check.score(np.array([[-2.0, 0, 0, 0], [0, 0, 0, 0], [2.0, 0, 0, 0]]))
    assert np.all(np.diff(scores) > 0) and scores[1] == pytest.approx(0.5)


def test_population_check_round_trips(tmp_path):
    check = _check(0.7)
    check.save(tmp_path / "p.npz")
    from pneumo.models.population import load_population

    back = load_population(tmp_path / "p.npz")
    assert back.threshold == pytest.approx(0.7)
    x = np.array([[0.3, 1, 2, 3]])
    assert back.score(x) == pytest.approx(check.score(x))
    assert load_population(tmp_path / "missing.npz") is None


@pytest.mark.parametrize("share", [0.0, 0.005, 0.01, 0.1])
def test_threshold_flags_at_most_the_allowed_share(share):
    scores = np.random.default_rng(0).random(1000)
    t = threshold_for(scores, share)
    assert (scores >= t).mean() <= share
    assert (scores >= t).sum() == int(np.floor(share * 1000))


def _reading(**kw) -> reader.Reading:
    base = dict(name="x.png", digest="d", probability=0.9, features=np.array([2.0, 0, 0, 0]))
    return reader.Reading(**{**base, **kw})


def test_pixels_flag_an_older_looking_image_when_the_header_is_silent():
    check = scope.ScopeCheck(_check())
    r = _reading()
    assert check(r).code == scope.LOOKS_OLDER and r.older_score > 0.5
    assert check(_reading(features=np.array([-2.0, 0, 0, 0]))) is None


def test_a_stated_age_is_not_overruled_by_the_pixels():
    check = scope.ScopeCheck(_check())
    child = _reading(header=HeaderFacts(age_years=3.0))
    assert check(child) is None and child.older_score > 0.5  # scored, not used
    adult = _reading(header=HeaderFacts(age_years=40.0), features=np.array([-2.0, 0, 0, 0]))
    assert check(adult).code == scope.HEADER_AGE


def test_without_a_population_check_only_the_header_counts():
    check = scope.ScopeCheck(None)
    assert check(_reading()) is None
    assert check(_reading(header=HeaderFacts(view=LATERAL))).code == scope.HEADER_VIEW


# --- one trust state ----------------------------------------------------------------------------

def _quality(*codes) -> QualityReport:
    fixable = any(c != LOW_RESOLUTION for c in codes)  # the checker offers a corrected copy
    return QualityReport(findings=[(c, f"message {c}") for c in codes],
                         corrected=np.zeros((4, 4, 3), "uint8") if fixable else None,
                         low_resolution=LOW_RESOLUTION in codes, original_size=(100, 100))


def test_trust_states_in_order_of_seriousness():
    assert reader.Reading(name="a", digest="d", error="broken").trust.state == trust.NOT_READ
    assert _reading(ood_warning="not an x-ray", quality=_quality(INVERTED)).trust.state == trust.OUT_OF_SCOPE
    older = _reading(scope=scope.Verdict(scope.LOOKS_OLDER, "older"), quality=_quality(INVERTED))
    assert older.trust.state == trust.OUT_OF_SCOPE and older.trust.reason == "older"
    assert _reading(lung_warning="no lungs").trust.code == (
        trust.NO_LUNGS if config.NO_LUNGS_OUT_OF_SCOPE else "")
    doubtful = _reading(quality=_quality(INVERTED, LOW_RESOLUTION)).trust
    assert doubtful.state == trust.DOUBTFUL and doubtful.code == INVERTED
    assert doubtful.reason == f"message {INVERTED}"
    assert _reading(quality=_quality(LOW_RESOLUTION)).trust.state == trust.TRUSTED
    assert _reading().trust.trusted


@pytest.mark.parametrize(("kw", "decision"), [
    ({}, "PNEUMONIA"),
    ({"probability": 0.1}, "NORMAL"),
    ({"quality": _quality(INVERTED)}, "DOUBTFUL"),
    ({"ood_warning": "not an x-ray"}, "OUT OF SCOPE"),
    ({"scope": scope.Verdict(scope.HEADER_AGE, "age")}, "OUT OF SCOPE"),
])
def test_the_decision_column_names_a_class_only_for_trusted_readings(kw, decision):
    row = reader.result_row(_reading(**kw), 0.5)
    assert row["decision"] == decision
    assert row["trust"] == _reading(**kw).trust.state
    assert set(reader.RESULT_COLUMNS) == set(row)


def test_an_out_of_scope_reading_warns_with_its_reason_only():
    r = _reading(ood_warning="not an x-ray", quality=_quality(INVERTED))
    assert r.warnings[0] == "not an x-ray"
    assert f"message {INVERTED}" not in r.warnings  # no "inverted" on what is not an X-ray


# --- the image fixes of issue #20, through the bundled models --------------------------------

def test_a_mask_on_one_half_is_one_lung_and_a_pair_is_fine():
    from pneumo.models.lungs import NO_LUNGS_WARNING, ONE_LUNG_WARNING, LungFields

    pair = np.zeros((224, 224), bool)
    pair[40:180, 30:100] = pair[40:180, 124:194] = True
    one = np.zeros((224, 224), bool)
    one[40:200, 20:110] = True
    assert LungFields(pair, float(pair.mean()), 2).problem is None
    assert LungFields(one, float(one.mean()), 1).problem == ONE_LUNG_WARNING
    assert LungFields(one, float(one.mean()), 1).lesser_side_share == 0.0
    assert LungFields(np.zeros((224, 224), bool), 0.0, 0).problem == NO_LUNGS_WARNING


@pytest.fixture(scope="module")
def pipeline(bundled_model_dir):
    from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer

    checks = dict(ood_check=ood.load_detector(), segmenter=load_segmenter(),
                  quality_checker=load_quality_checker(), scope_check=load_scope_check())
    explainer = load_explainer()
    return lambda files: reader.read_batch(files, explainer, **checks)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_blank_image_is_not_a_chest_xray_and_not_inverted(pipeline, value):
    r = pipeline([("blank.png", gen.encode(np.full((400, 400), value, np.uint8), "PNG"))])[0]
    assert r.trust.state == trust.OUT_OF_SCOPE and r.trust.code == trust.NOT_XRAY
    assert not any("inverted" in w for w in r.warnings)
    assert reader.result_row(r, 0.5)["decision"] == "OUT OF SCOPE"


def test_turned_children_stay_doubtful_and_are_not_called_older(pipeline, shared_data):
    """Checks on a turned or inverted film judge its corrected copy: a child's film upside down
    is offered its corrected reading, not called "older" or "not a chest X-ray"."""
    from PIL import Image

    files = []
    for path in sorted((shared_data / "test" / "NORMAL").glob("*.jpeg"))[:4]:
        grey = np.asarray(Image.open(path).convert("L"))
        for name, turned in (("inv", 255 - grey), ("rot90", np.rot90(grey)), ("ud", grey[::-1])):
            files.append((f"{path.name}-{name}.png", gen.encode(np.ascontiguousarray(turned), "PNG")))
    states = [r.trust.state for r in pipeline(files)]
    assert states.count(trust.DOUBTFUL) >= len(files) - 1, states


def test_nih_adults_are_out_of_scope_and_test_children_are_not(pipeline, shared_data):
    """A handful of each, through the whole path: the figures are in benchmarks/scope_check.py."""
    older = shared_data.parent / "nih_cxr14_sample" / "NO_FINDING"
    if not older.is_dir():
        pytest.skip("no ../shared/data/nih_cxr14_sample")
    adults = sorted(older.glob("*.jpeg"))[:8]
    children = sorted((shared_data / "test" / "NORMAL").glob("*.jpeg"))[:8]
    readings = pipeline([(p.name, p.read_bytes()) for p in adults + children])
    flagged_adults = sum(r.trust.state == trust.OUT_OF_SCOPE for r in readings[:8])
    flagged_children = sum(r.trust.state == trust.OUT_OF_SCOPE for r in readings[8:])
    assert flagged_adults >= 6 and flagged_children <= 1
