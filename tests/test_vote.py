"""An ensemble's members' vote (issue #25 step 3's declared rule): where it is decided, what the
CSV and the worklist carry, what the card says; a single model changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.reading import reader, trust, wording
from pneumo.reading.vote import Vote, vote


def _reading(**kw) -> reader.Reading:
    base = dict(name="x.png", digest="d", probability=0.6)
    return reader.Reading(**{**base, **kw})


@pytest.mark.parametrize(("probabilities", "threshold", "pneumonia", "disagree"), [
    ([0.9, 0.8, 0.7, 0.2, 0.1], 0.5, 3, True),  # 3-2
    ([0.9, 0.8, 0.3, 0.2, 0.1], 0.5, 2, True),  # 2-3
    ([0.9, 0.8, 0.7, 0.6, 0.1], 0.5, 4, False),  # 4-1: one member alone is no disagreement
    ([0.9, 0.8, 0.7, 0.6, 0.5], 0.5, 5, False),  # at the threshold counts as pneumonia
    ([0.1, 0.2, 0.3, 0.4, 0.45], 0.5, 0, False),
    ([0.9, 0.8, 0.7, 0.2, 0.1], 0.75, 2, True),  # the threshold in use decides
    ([0.9, 0.8, 0.7, 0.2, 0.1], 0.95, 0, False),
    ([0.9, 0.1, 0.2], 0.5, 1, False),  # three members: a 2-1 vote is no disagreement
    ([0.9, 0.8, 0.2, 0.1], 0.5, 2, True),  # four: 2-2
])
def test_the_members_disagree_when_the_smaller_side_has_at_least_two(probabilities, threshold,
                                                                      pneumonia, disagree):
    got = vote(np.array(probabilities), threshold)
    assert got == Vote(pneumonia, len(probabilities))
    assert got.disagree is disagree


def test_one_model_has_no_vote():
    assert vote(None, 0.5) is None
    assert _reading().vote(0.5) is None
    assert _reading(error="bad file", probability=None,
                    member_probabilities=np.array([0.9, 0.1])).vote(0.5) is None


def test_the_csv_carries_the_vote_and_it_does_not_change_the_trust_state():
    split = _reading(member_probabilities=np.array([0.9, 0.8, 0.7, 0.2, 0.1]))
    agreed = _reading(member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.1]))
    single = _reading()
    rows = [reader.result_row(r, 0.5) for r in (split, agreed, single)]
    assert [(r["members_pneumonia"], r["members_disagree"]) for r in rows] == [
        ("3 of 5", True), ("4 of 5", False), ("", False)]
    assert all(set(r) == set(reader.RESULT_COLUMNS) for r in rows)
    assert split.trust.state == trust.TRUSTED and rows[0]["decision"] == "PNEUMONIA"


def test_the_worklist_flags_a_split_vote_without_changing_its_trust_state():
    """A 3-2 vote is right about half the time: the worklist flags it (after the doubtful films,
    before the out-of-scope ones) and says why, while the trust state and the CSV's reason stay."""
    from pneumo.app import ui

    split = _reading(member_probabilities=np.array([0.9, 0.8, 0.3, 0.2, 0.1]))
    agreed = _reading(name="y.png", member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.1]))
    rows = reader.worklist_rows([agreed, split], 0.5)
    assert [row["file"] for row in rows] == ["x.png", "y.png"]  # flagged first
    by_file = {row["file"]: row for row in rows}
    said = "The five models disagree on this image: 2 of 5 say pneumonia."
    assert by_file["x.png"]["warning"] == by_file["x.png"]["why_flagged"] == said
    assert by_file["x.png"]["flagged"] and by_file["x.png"]["trust"] == trust.TRUSTED
    assert by_file["x.png"]["reason"] == ""  # the CSV's reason is the trust state's
    assert ui.flagged_line(by_file["x.png"], split) == f"- **[x.png](#{ui.card_anchor(split)})**: {said}"
    assert by_file["y.png"]["warning"] == by_file["y.png"]["why_flagged"] == ""
    assert not by_file["y.png"]["flagged"]


def test_disagreement_wording():
    assert wording.disagreement_text(Vote(2, 5)) == (
        "The five models disagree on this image: 2 of 5 say pneumonia.")
    assert wording.disagreement_text(Vote(3, 5)) == (
        "The five models disagree on this image: 3 of 5 say pneumonia.")
    assert wording.disagreement_text(Vote(2, 4)).startswith("The four models disagree")
    assert wording.disagreement_text(Vote(4, 5)) == ""
    assert wording.disagreement_text(None) == ""
    assert wording.number_word(12) == "12"


def test_a_site_calibration_moves_the_members_probabilities_with_the_ensembles():
    from pneumo.reading.site import apply_calibration, calibrate_reading

    class Calibration:
        def apply(self, p):
            return apply_calibration(p, 1.5, -2.0)

    members = np.array([0.9, 0.8, 0.6, 0.2, 0.1])
    got = calibrate_reading(_reading(member_probabilities=members), Calibration())
    np.testing.assert_allclose(got.member_probabilities, apply_calibration(members, 1.5, -2.0))
    assert got.bundled_probability == 0.6
    assert calibrate_reading(_reading(), Calibration()).member_probabilities is None


def test_the_worklist_table_has_a_models_column_only_for_an_ensemble():
    from pneumo.app import ui

    split = _reading(member_probabilities=np.array([0.9, 0.8, 0.3, 0.2, 0.1]))
    agreed = _reading(name="y.png", member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.55]))
    rows = reader.worklist_rows([split, agreed], 0.5)
    table, columns = ui.worklist_table(rows, [split, agreed])
    assert list(columns)[:5] == ["file", "probability", "decision", "trust", "members"]
    assert table.data.set_index("file")["members"].to_dict() == {
        "x.png": "2 of 5 \u2014 disagree", "y.png": "5 of 5"}
    single = [_reading()]
    table, columns = ui.worklist_table(reader.worklist_rows(single, 0.5), single)
    assert "members" not in columns and "members" not in table.data


class _EnsembleStandIn:
    """An explainer-like stand-in for a five-model ensemble: probability 0.6, members 2-3."""

    runtime = "stand-in"
    members = np.array([0.9, 0.8, 0.3, 0.2, 0.1])

    def explain(self, images):
        from pneumo.models.explain import METHODS, Explanation

        cam = np.linspace(0, 1, 49, dtype="float32").reshape(7, 7)
        return [Explanation(0.6, {m: cam for m in METHODS}, np.zeros(1280, "float32"),
                            self.members) for _ in np.asarray(images)]


def test_the_card_and_the_worklist_say_when_the_models_disagree(monkeypatch):
    from conftest import png_bytes, run_app, synthetic_xray

    from pneumo.app import ui
    from pneumo.models.quality import QualityChecker

    stand_in = _EnsembleStandIn()
    monkeypatch.setattr(ui, "explainer", lambda: stand_in)
    monkeypatch.setattr(ui, "segmenter", lambda: None)
    monkeypatch.setattr(ui, "scope_check", lambda: None)
    monkeypatch.setattr(ui, "ood_detector", lambda: None)
    monkeypatch.setattr(ui, "quality_checker", lambda: QualityChecker())
    at = run_app()
    at.switch_page("pages/read_xrays.py").run()
    at.session_state["threshold"] = 0.5
    at.file_uploader[0].set_value([(f"f{i}.png", png_bytes(synthetic_xray(280, 60 + i)), "image/png")
                                   for i in range(2)]).run()
    assert not at.exception, at.exception
    said = [w.value for w in at.warning if "disagree" in w.value]
    assert said == ["The five models disagree on this image: 2 of 5 say pneumonia."] * 2
    table = at.dataframe[0].value
    assert list(table["members"]) == ["2 of 5 \u2014 disagree"] * 2
    assert list(table["trust"]) == ["Trusted"] * 2  # it does not change the trust state
    at.session_state["threshold"] = 0.85  # 1 of 5 at this threshold: no disagreement
    at.run()
    assert not [w for w in at.warning if "disagree" in w.value]
    assert list(at.dataframe[0].value["members"]) == ["1 of 5"] * 2



def test_the_worklist_withholds_the_vote_of_an_out_of_scope_film():
    """An out-of-scope film's reading is withheld in the worklist; its models' vote with it
    ("5 of 5" beside an adult's film would be the answer pneumo declines to give)."""
    from pneumo.app import ui

    refused = _reading(name="adult.png", ood_warning="This does not look like a chest X-ray.",
                       member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.55]))
    shown = _reading(name="child.png", member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.55]))
    rows = reader.worklist_rows([refused, shown], 0.5)
    assert refused.trust.state == "out_of_scope"
    table, _ = ui.worklist_table(rows, [refused, shown])
    assert table.data.set_index("file")["members"].to_dict() == {"adult.png": "", "child.png": "5 of 5"}

def test_model_card_lines_name_the_members_only_for_an_ensemble():
    from pneumo.reading.wording import ensemble_card_lines

    assert ensemble_card_lines(()) == ""
    text = ensemble_card_lines([{"seed": 1337, "val_log_loss": 0.099},
                                {"seed": 2027, "val_log_loss": 0.1031}])
    assert "two members" in text and "1337, 2027" in text and "0.0990-0.1031" in text
    assert "plain mean of the members' Grad-CAM maps" in text


def test_disagreement_report_counts_the_split_votes_and_accuracy_either_side():
    from pneumo.reading.vote import disagreement_report

    members = np.array([[0.9, 0.9, 0.9, 0.9, 0.9],   # 5-0 pneumonia
                        [0.9, 0.9, 0.9, 0.1, 0.1],   # 3-2: disagree
                        [0.1, 0.1, 0.1, 0.1, 0.9],   # 1-4: agree
                        [0.1, 0.1, 0.9, 0.9, 0.1]])  # 2-3: disagree
    report = disagreement_report([1, 0, 0, 1], [0.9, 0.7, 0.2, 0.4], members, 0.5)
    assert report["disagree"] == 2 and report["disagree_share"] == 0.5
    assert report["accuracy_all"] == 0.5  # right on images 0 and 2, wrong on 1 and 3
    assert report["accuracy_without_disagreeing"] == 1.0
    assert report["accuracy_on_disagreeing"] == 0.0
    assert report["disagree_by_class"] == {"NORMAL": 1, "PNEUMONIA": 1}


def test_evaluate_reports_members_on_their_own_and_their_disagreement():
    from pneumo.cli.evaluate import ensemble_section, format_ensemble

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    members = np.clip(y[:, None] * 0.6 + rng.uniform(0, 0.4, (100, 5)), 0, 1)
    split = {"label": y, "probability": members.mean(axis=1), "members": members}
    section = ensemble_section(split, split, 0.5)
    assert [x["member"] for x in section["members"]] == [1, 2, 3, 4, 5]
    assert all(x["test"]["auc"] == 1.0 for x in section["members"])  # separable by design
    assert section["disagreement"]["test"]["n"] == 100
    assert set(section["members_test_mean_sd"]) >= {"auc", "accuracy", "ece"}
    assert any("members disagree (test)" in line for line in format_ensemble(section))


def test_the_worklist_tints_a_split_vote_without_muting_its_reading():
    """Flagged rows are tinted; a split vote's text stays as dark as any trusted reading's
    (only a reading that is not trusted is muted)."""
    import re

    from pneumo.app import ui

    split = _reading(member_probabilities=np.array([0.9, 0.8, 0.3, 0.2, 0.1]))
    agreed = _reading(name="y.png", member_probabilities=np.array([0.9, 0.8, 0.7, 0.6, 0.1]))
    rows = reader.worklist_rows([agreed, split], 0.5)
    styler, _ = ui.worklist_table(rows, [agreed, split])
    css = styler.to_html()
    split_row = re.findall(r"_row0_col\d+ \{([^}]*)\}", css)
    assert split_row and all("background-color: #fff4e0" in rule and "color: #" not in
                             rule.replace("background-color: #", "") for rule in split_row)
    assert not re.findall(r"_row1_col\d+ \{([^}]*)\}", css)  # the agreed film: not tinted
