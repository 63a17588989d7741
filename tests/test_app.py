"""The app through Streamlit's AppTest: upload, threshold, presets, shared state, all pages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOT, png_bytes, run_app, synthetic_xray
from conftest import explorer_caption_counts as _caption_counts

from pneumo import config
from pneumo.evaluation import metrics as m
from pneumo.reading import wording

pytestmark = pytest.mark.usefixtures("bundled_model_dir")

READ_PAGE = "pages/read_xrays.py"
EXPLORER_PAGE = "pages/threshold_explorer.py"
CARD_PAGE = "pages/model_card.py"


def _app():
    return run_app()


@pytest.fixture
def synthetic_films(monkeypatch):
    """The checks a synthetic test image is no subject for (not a chest X-ray, the header and
    pixel population checks, orientation and grey scale) are off, so a test of the page itself
    sees its reading as trusted; the resolution check stays. Real films keep every check."""
    from pneumo.app import ui
    from pneumo.models.quality import QualityChecker

    monkeypatch.setattr(ui, "scope_check", lambda: None)
    monkeypatch.setattr(ui, "ood_detector", lambda: None)
    monkeypatch.setattr(ui, "quality_checker", lambda: QualityChecker())


def _set_threshold(at, value: float) -> None:
    """Move the shared threshold as the sidebar slider's callback does.

    (AppTest drops the entry script's sidebar widgets from its element tree on reruns with
    st.navigation, so the slider itself is exercised by the browser test.)
    """
    at.session_state["threshold"] = value
    at.run()


def _expected_probability(data: bytes) -> float:
    from pneumo.io.images import load_image
    from pneumo.models.classifier import Predictor, load_model

    return float(Predictor(load_model()).predict(load_image(data)[None])[0])


def _shown_texts(at) -> list[str]:
    return [x.value for x in at.metric if x.label == "Probability of pneumonia"]


def _interval(text: str) -> tuple[float, float]:
    """The probabilities a shown text stands for: "< 1 %", "> 99 %" or a whole percent."""
    if text == "< 1 %":
        return 0.0, 0.01
    if text == "> 99 %":
        return 0.99, 1.0
    hit = re.fullmatch(r"(\d{1,2}) %", text)
    assert hit, f"unexpected probability text {text!r}"
    return (int(hit.group(1)) - 0.5) / 100, (int(hit.group(1)) + 0.5) / 100


def _assert_shows(text: str, probability: float) -> None:
    lo, hi = _interval(text)
    assert lo - 1e-3 <= probability <= hi + 1e-3, (text, probability)


BADGE = re.compile(r"background:(#[0-9a-f]{6})[^>]*>((PNEUMONIA|NORMAL)[^<]*)</span>")


def _badges(at) -> list[tuple[str, str]]:
    """(colour, text) of each decision badge on the page, in order."""
    return [(hit.group(1), hit.group(2)) for md in at.markdown
            if (hit := BADGE.search(md.value))]


def _decisions(at) -> list[str]:
    """The side of the threshold each card's badge states (qualified or not)."""
    return [text.split()[0] for _, text in _badges(at)]


def test_the_worklist_is_built_once_per_rows(monkeypatch, synthetic_films):
    """A rerun that changes nothing in the worklist (a heat-map control) does not build it
    again; a new threshold does."""
    from pneumo.app import ui

    built = []
    make = ui.worklist_table
    monkeypatch.setattr(ui, "worklist_table", lambda *a, **k: built.append(1) or make(*a, **k))
    at = _app()
    at.file_uploader[0].set_value([(f"f{i}.png", png_bytes(synthetic_xray(300, 60 + i)),
                                    "image/png") for i in range(2)]).run()
    assert not at.exception, at.exception
    assert len(built) == 1
    at.slider(key="cam_opacity").set_value(0.3).run()
    assert len(built) == 1 and len(at.dataframe) == 1
    _set_threshold(at, 0.0)
    assert len(built) == 2
    assert set(at.dataframe[0].value["decision"]) == {"PNEUMONIA"}


def test_upload_shows_probability_overlay_and_errors(synthetic_films):
    at = _app()
    good = png_bytes(synthetic_xray(300, 1))
    other = png_bytes(synthetic_xray(260, 2))
    at.file_uploader[0].set_value([
        ("first.png", good, "image/png"),
        ("empty.png", b"", "image/png"),
        ("second.png", other, "image/png"),
    ]).run()
    assert not at.exception, at.exception
    _set_threshold(at, 0.0)  # every heat map shown
    shown = _shown_texts(at)
    assert len(shown) == 2
    expected = sorted([_expected_probability(good), _expected_probability(other)], reverse=True)
    for text, p in zip(shown, expected):
        _assert_shows(text, p)
    # original + overlay for each readable image, plus the colour-scale legend
    assert len(at.get("imgs")) >= 5 or len(at.image) >= 5
    assert any("empty.png" in e.value and "empty" in e.value.lower() for e in at.error)
    assert len(at.dataframe) == 1  # the worklist
    table = at.dataframe[0].value
    assert table["probability"].dtype.kind == "f"  # a number: a header click sorts numbers
    assert list(table["trust"]) == ["Not read", "Trusted", "Trusted"]  # flagged first
    assert [wording.probability_text(p) for p in table["probability"][1:]] == shown


def test_one_inference_queue_per_server_loaded_as_it_starts(synthetic_films):
    """The entry script starts the server's one queue (the model loads in the background); every
    session's reading goes through that same queue, in batches, with the serving runtime."""
    from pneumo.app import ui
    from pneumo.models.serving import InferenceQueue

    at = _app()
    queue = ui.explainer()
    assert isinstance(queue, InferenceQueue) and queue is ui.explainer()
    assert queue.wait_ready(300) and queue.load_error is None
    assert queue.runtime in ("openvino", "keras")
    before = sum(queue.batches)
    at.file_uploader[0].set_value([(f"q{i}.png", png_bytes(synthetic_xray(280, 40 + i)),
                                    "image/png") for i in range(3)]).run()
    assert not at.exception, at.exception
    assert len(_shown_texts(at)) == 3
    assert sum(queue.batches) - before == 3  # this session's images went through the queue
    assert _app() is not None and ui.explainer() is queue  # a second session: the same queue


def test_threshold_moves_the_decision(synthetic_films):
    at = _app()
    data = png_bytes(synthetic_xray(300, 3))
    at.file_uploader[0].set_value(("x.png", data, "image/png")).run()
    p = _expected_probability(data)
    _assert_shows(_shown_texts(at)[0], p)
    below, above = max(p - 0.05, 0.0), min(p + 0.05, 1.0)
    _set_threshold(at, round(below, 3))
    assert _decisions(at) == ["PNEUMONIA"]
    _set_threshold(at, round(above, 3))
    assert _decisions(at) == ["NORMAL"]



def test_explorer_confusion_counts_follow_the_threshold():
    from pneumo.evaluation.artifacts import read_predictions

    test = read_predictions("test")
    at = _app()
    at.switch_page(EXPLORER_PAGE).run()
    assert not at.exception, at.exception
    for t in (0.2, 0.5, 0.9):
        _set_threshold(at, t)
        c = m.confusion(test.label, test.probability, t)
        assert _caption_counts(at) == (c["fn"], c["fp"])
    assert len(at.get("plotly_chart")) >= 7


def test_presets_set_the_shared_slider_and_other_pages_follow(synthetic_films):
    import json

    metrics = json.loads(config.weights_path(config.METRICS_FILE).read_text())
    at = _app()
    at.switch_page(EXPLORER_PAGE).run()
    preset = next(b for b in at.button if b.label.startswith("High sensitivity"))
    preset.click().run()
    expected = round(metrics["thresholds"]["high_sensitivity"], 3)
    assert at.session_state["threshold"] == pytest.approx(expected)
    next(b for b in at.button if b.label.startswith("0.5")).click().run()
    assert at.session_state["threshold"] == pytest.approx(0.5)
    # the value set on the explorer is the one the reading page uses
    at.switch_page(READ_PAGE).run()
    assert at.session_state["threshold"] == pytest.approx(0.5)
    data = png_bytes(synthetic_xray(300, 4))
    at.file_uploader[0].set_value(("y.png", data, "image/png")).run()
    p = _expected_probability(data)
    assert _decisions(at) == ["PNEUMONIA" if p >= 0.5 else "NORMAL"]
    assert any("0.500" in md.value for md in at.markdown)


def test_model_card_renders():
    at = _app()
    at.switch_page(CARD_PAGE).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) >= 3
    assert any("not a diagnosis" in md.value for md in at.markdown)
    # the bundled maps look alike from film to film (metrics.json): the card says what follows
    assert any("do not use them to localise" in md.value for md in at.markdown)



def test_model_card_renders_without_training_curves(monkeypatch):
    """An ensemble has no history.csv of its own (each member has one): the card still shows
    the class balance and the training facts, without the curves."""
    from pneumo.app import ui

    monkeypatch.setattr(ui, "history", lambda: None)
    at = _app()
    at.switch_page(CARD_PAGE).run()
    assert not at.exception, at.exception
    assert any("Architecture" in md.value for md in at.markdown)

CACHES = ("__pycache__", ".pytest_cache", ".hypothesis", "test-artifacts", ".ruff_cache")


def _tree_state(folder) -> set[tuple[str, float]]:
    """(path, mtime) of every file below ``folder``, Python and test caches aside."""
    out = set()
    for path in folder.rglob("*"):
        if any(part in CACHES for part in path.parts):
            continue
        try:
            if path.is_file():
                out.add((str(path), path.stat().st_mtime))
        except OSError:
            continue
    return out


def test_a_batch_writes_nothing_to_disk_and_connects_nowhere(monkeypatch, tmp_path, synthetic_films):
    """Uploads stay in memory, and no socket leaves the machine while a batch is read."""
    import socket
    import tempfile
    from pathlib import Path

    attempts = []
    original = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(
                ("127.", "::1", "localhost")):
            attempts.append(address)
            raise OSError("blocked by test")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    temp = Path(tempfile.gettempdir())
    before_temp, before_repo = _tree_state(temp), _tree_state(ROOT)
    uploads = [png_bytes(synthetic_xray(280, 10 + i)) for i in range(3)]
    at = _app()
    at.file_uploader[0].set_value(
        [(f"p{i}.png", data, "image/png") for i, data in enumerate(uploads)]).run()
    assert len(_shown_texts(at)) == 3
    assert attempts == []
    assert _tree_state(ROOT) - before_repo == set()  # nothing new or changed in the project
    # other programs may write to the temp folder meanwhile: none of it may hold upload bytes
    needles = [data[len(data) // 2: len(data) // 2 + 256] for data in uploads]
    for path, _ in _tree_state(temp) - before_temp:
        try:
            content = Path(path).read_bytes()
        except OSError:
            continue
        assert not any(n in content for n in needles), f"upload bytes found in {path}"


# --- lung fields, heat maps that do not shout, evidence beside the probability ---

def _captions(at) -> list[str]:
    return [c for img in at.image for c in img.captions]


def _toggle(at, label: str):
    found = [t for t in at.toggle if t.label == label]
    return found[0] if found else None


def _cam(image: np.ndarray, method: str = "Grad-CAM") -> np.ndarray:
    from pneumo.models.classifier import load_model
    from pneumo.models.explain import CamExplainer

    global _EXPLAINER
    if _EXPLAINER is None:
        _EXPLAINER = CamExplainer(load_model())
    return _EXPLAINER.explain(image[None])[0].cams[method]


_EXPLAINER = None


class _CamSegmenter:
    """A stand-in lung segmenter whose "lungs" are chosen from the image's own Grad-CAM map: the
    ``hottest`` half of the pixels (so at least half the heat lies inside) or the coldest 30 %
    (at most 30 % inside). Shares are thus known to fall on either side of the caution line."""

    def __init__(self, hottest: bool):
        self.hottest = hottest
        self.calls = 0

    def fields(self, images):
        from pneumo.models.explain import upsample
        from pneumo.models.lungs import LungFields

        self.calls += 1
        out = []
        for image in np.asarray(images):
            up = upsample(_cam(image), config.IMAGE_SIZE, config.IMAGE_SIZE).ravel()
            order = np.argsort(up)
            chosen = order[len(order) // 2:] if self.hottest else order[:int(0.3 * len(order))]
            mask = np.zeros(up.size, bool)
            mask[chosen] = True
            mask = mask.reshape(config.IMAGE_SIZE, config.IMAGE_SIZE)
            out.append(LungFields(mask=mask, area=float(mask.mean()), components=2))
        return out


def test_heat_map_hidden_below_threshold_until_asked(synthetic_films):
    at = _app()
    data = png_bytes(synthetic_xray(300, 5))
    at.file_uploader[0].set_value(("z.png", data, "image/png")).run()
    p = _expected_probability(data)
    _set_threshold(at, round(min(p + 0.05, 1.0), 3))  # below the threshold
    assert not any("overlay" in c for c in _captions(at))
    assert any("Heat map hidden" in i.value for i in at.info)
    assert not any(b.label == "Download overlay (PNG)" for b in at.get("download_button"))
    _toggle(at, "Show heat map").set_value(True).run()
    assert any(c == "Grad-CAM overlay (faint: below the threshold)" for c in _captions(at))
    assert not any("Heat map hidden" in i.value for i in at.info)
    _set_threshold(at, round(max(p - 0.05, 0.0), 3))  # above: shown at full strength, no toggle
    assert "Grad-CAM overlay" in _captions(at)
    assert _toggle(at, "Show heat map") is None
    # the legend says the colours are relative to the image
    assert any("relative to each image" in c for c in _captions(at))


def test_evidence_line_beside_the_probability(synthetic_films):
    """The calibrated probability stays the headline; the test split's observed share is the
    evidence line under it, and a gap of more than 15 points between them is said plainly."""
    from pneumo.evaluation.artifacts import read_predictions

    test = read_predictions("test")
    at = _app()
    data = png_bytes(synthetic_xray(300, 6))
    at.file_uploader[0].set_value(("e.png", data, "image/png")).run()
    p = _expected_probability(data)
    line = wording.evidence_line(p, test.probability, test.label)
    assert line.startswith("On the official test set, films scored like this one")
    captions = [c.value for c in at.caption]
    assert line in captions
    gap = wording.evidence_gap(p, test.probability, test.label)
    assert (gap in captions) if gap else not any("estimate runs" in c for c in captions)
    _assert_shows(_shown_texts(at)[0], p)  # the headline is still the probability


def test_without_a_lung_model_the_lung_features_are_hidden(monkeypatch, synthetic_films):
    from pneumo.app import ui

    monkeypatch.setattr(ui, "segmenter", lambda: None)
    at = _app()
    at.file_uploader[0].set_value(("n.png", png_bytes(synthetic_xray(300, 7)), "image/png")).run()
    _set_threshold(at, 0.0)
    assert not at.exception
    assert _toggle(at, "Show lung outline") is None
    assert not any("inside the lungs" in md.value for md in at.markdown)


@pytest.mark.parametrize("hottest", [True, False])
def test_lung_outline_share_and_caution(monkeypatch, synthetic_films, hottest):
    from pneumo.app import ui
    from pneumo.io.images import load_image
    from pneumo.models import explain
    from pneumo.models.lungs import OUTSIDE_LUNGS_CAUTION, heatmap_in_lungs
    from pneumo.reading import wording

    seg = _CamSegmenter(hottest)
    monkeypatch.setattr(ui, "segmenter", lambda: seg)
    drawn = []
    original_draw = explain.draw_outline
    monkeypatch.setattr(explain, "draw_outline",
                        lambda rgb, edge, *a: drawn.append(edge) or original_draw(rgb, edge, *a))
    at = _app()
    data = png_bytes(synthetic_xray(300, 8))
    at.file_uploader[0].set_value(("l.png", data, "image/png")).run()
    _set_threshold(at, 0.0)  # heat map shown
    assert seg.calls == 1

    image = load_image(data)
    share = heatmap_in_lungs(_cam(image), seg.fields(image[None])[0].mask)[0]
    assert (share >= 0.5) if hottest else (share <= 0.3)
    lines = [md.value for md in at.markdown if "inside the lungs" in md.value]
    assert lines == [wording.lung_share_text(share)]
    cautions = [w.value for w in at.warning if w.value == OUTSIDE_LUNGS_CAUTION]
    assert cautions == ([] if hottest else [OUTSIDE_LUNGS_CAUTION])

    # the outline: off by default, then drawn on the original and on the overlay
    assert drawn == []
    _toggle(at, "Show lung outline").set_value(True).run()
    assert not at.exception
    assert len(drawn) == 2 and all(d.any() for d in drawn)
    drawn.clear()
    _set_threshold(at, 1.0)  # heat map hidden: the original keeps its outline, its picture kept
    assert drawn == []  # (ui.card_pictures: nothing the original shows changed)
    _toggle(at, "Show lung outline").set_value(False).run()
    _toggle(at, "Show lung outline").set_value(True).run()
    assert len(drawn) == 1  # drawn again, on the original only: the heat map is hidden
    assert not any("inside the lungs" in md.value for md in at.markdown)


def test_real_lung_model_on_a_real_xray(shared_data):
    from pneumo.io.images import load_image
    from pneumo.models.lungs import LungSegmenter, heatmap_in_lungs
    from pneumo.reading import wording

    if not config.weights_path(config.LUNG_MODEL_FILE).exists():
        pytest.skip(f"no lung-field model at {config.weights_path(config.LUNG_MODEL_FILE)}")
    path = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    data = path.read_bytes()
    at = _app()
    at.file_uploader[0].set_value((path.name, data, "image/jpeg")).run()
    _set_threshold(at, 0.0)
    assert not at.exception
    assert _toggle(at, "Show lung outline") is not None
    image = load_image(data)
    fields = LungSegmenter.load().fields(image[None])[0]
    texts = [md.value for md in at.markdown if "inside the lungs" in md.value]
    if fields.problem:
        assert texts == [] and any(w.value == fields.problem for w in at.warning)
    else:
        share = heatmap_in_lungs(_cam(image), fields.mask)[0]
        assert texts == [wording.lung_share_text(share)]


def test_low_probability_normal_xray_shows_no_heat_map(shared_data):
    """A NORMAL test image the model scores below 10 %: no overlay at the recommended threshold."""
    from pneumo.evaluation.artifacts import read_predictions

    test = read_predictions("test")
    low = [(f, p) for f, p, c in zip(test.filename, test.probability, test.class_name)
           if c == "NORMAL" and p < 0.1]
    assert low, "no NORMAL test image below 10 %"
    name, p = low[0]
    data = (shared_data / "test" / "NORMAL" / name).read_bytes()
    at = _app()
    at.file_uploader[0].set_value((name, data, "image/jpeg")).run()
    assert at.session_state["threshold"] > p
    _assert_shows(_shown_texts(at)[0], p)
    assert not any("overlay" in c for c in _captions(at))
    assert _toggle(at, "Show heat map") is not None


# --- image quality: turned, flipped, inverted, low resolution ---

def _quality_model():
    if not config.weights_path(config.QUALITY_MODEL_FILE).exists():
        pytest.skip(f"no quality network at {config.weights_path(config.QUALITY_MODEL_FILE)}")


def _badge_colours(at) -> list[str]:
    return [colour for colour, _ in _badges(at)]


@pytest.mark.parametrize("code, label", [("rot90", "Read it turned the right way"),
                                         ("inverted", "Read the inverted image")])
def test_turned_or_inverted_xray_offers_a_reading_the_right_way(shared_data, code, label):
    from pneumo.app import ui
    from pneumo.io.images import load_image
    from pneumo.models import quality

    _quality_model()
    path = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    upright = load_image(path)
    data = png_bytes(quality.apply(upright, code))
    at = _app()
    at.file_uploader[0].set_value((f"{code}.png", data, "image/png")).run()
    _set_threshold(at, 0.5)
    assert not at.exception, at.exception
    assert quality.MESSAGES[code] in [w.value for w in at.warning]
    buttons = [b for b in at.button if b.label == label]
    assert len(buttons) == 1
    anyway = _toggle(at, "Show the reading anyway")  # a turned film may find one lung only:
    if anyway is not None:  # out of scope, its reading withheld until asked for
        assert _badges(at) == [] and _shown_texts(at) == []
        anyway.set_value(True).run()
    label_shown = _badges(at)[0][1]
    assert "doubtful" in label_shown or "outside the validated population" in label_shown
    buttons = [b for b in at.button if b.label == label]
    assert _badge_colours(at) == ["#8a8f98"]  # greyed out, like a "not a chest X-ray" one
    as_uploaded = _shown_texts(at)
    _assert_shows(as_uploaded[0], _expected_probability(data))

    buttons[0].click().run()
    assert not at.exception, at.exception
    shown = _shown_texts(at)
    assert len(shown) == 2 and shown[0] == as_uploaded[0]
    _assert_shows(shown[1], _expected_probability(png_bytes(upright)))  # as if uploaded upright
    assert quality.correction_note([code]) in [i.value for i in at.info]
    assert "Corrected by pneumo" in _captions(at)
    colours = _badge_colours(at)
    assert colours[0] == "#8a8f98" and colours[1] in ui.DECISION_COLOURS.values()
    assert not any(b.label == label for b in at.button)  # read once, then shown
    at.run()  # the corrected reading stays without another click
    assert len(_shown_texts(at)) == 2


def test_an_upright_xray_gets_no_quality_message_or_button(shared_data):
    from pneumo.models import quality

    _quality_model()
    path = sorted((shared_data / "test" / "NORMAL").glob("*.jpeg"))[0]
    at = _app()
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert len(_shown_texts(at)) == 1
    assert not any(w.value in quality.MESSAGES.values() for w in at.warning)
    assert not any(b.label.startswith("Read ") for b in at.button)


def test_a_64_px_radiograph_gets_the_low_resolution_note_not_the_ood_message(shared_data):
    from PIL import Image

    from pneumo.models import ood, quality

    path = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))[1]
    with Image.open(path) as img:
        small = np.asarray(img.convert("L").resize((64, 64), Image.LANCZOS))
    at = _app()
    at.file_uploader[0].set_value(("small.png", png_bytes(small), "image/png")).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert quality.low_resolution_message(64, 64) in warnings
    assert ood.WARNING not in warnings
    assert len(_shown_texts(at)) == 1


def test_quality_notice_shown_once_when_the_network_is_missing(monkeypatch, synthetic_films):
    from pneumo.app import ui
    from pneumo.models.quality import QualityChecker

    notice = "The orientation and grey-scale checks are off: test notice."
    monkeypatch.setattr(ui, "quality_checker", lambda: QualityChecker(notice=notice))
    at = _app()
    at.file_uploader[0].set_value([(f"q{i}.png", png_bytes(synthetic_xray(300, 20 + i)),
                                    "image/png") for i in range(2)]).run()
    assert not at.exception, at.exception
    assert [c.value for c in at.caption].count(notice) == 1
    assert len(_shown_texts(at)) == 2


def test_worklist_reports_the_corrected_reading_once_asked_for(shared_data):
    from pneumo.io.images import load_image
    from pneumo.models import quality

    _quality_model()
    paths = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    upright = load_image(paths[0])
    turned = png_bytes(quality.apply(upright, quality.ROT90))
    at = _app()
    at.file_uploader[0].set_value([("turned.png", turned, "image/png"),
                                   ("other.jpeg", paths[1].read_bytes(), "image/jpeg")]).run()
    assert not at.exception, at.exception

    def row() -> dict:
        table = at.dataframe[0].value
        return table[table["file"] == "turned.png"].iloc[0].to_dict()

    before = row()
    assert before["corrected"] == "" and before["trust"] != "Trusted"  # doubtful, or no lungs
    assert before["decision"] not in ("NORMAL", "PNEUMONIA") and before["reason"]
    assert at.dataframe[0].value.iloc[0]["file"] == "turned.png"  # flagged first
    next(b for b in at.button if b.label == "Read it turned the right way").click().run()
    assert not at.exception, at.exception
    after = row()
    assert after["corrected"] == quality.ROT90
    assert after["probability"] == pytest.approx(
        _expected_probability(png_bytes(upright)), abs=2e-4)
    assert quality.MESSAGES[quality.ROT90] not in after["warning"]


# --- trust states on the card and in the worklist; readings that outlive a page change ---

class _FlaggingChecker:
    """A stand-in quality checker: the images in ``inverted`` (model inputs) are reported
    inverted, with a corrected copy; every other image has no finding."""

    available, notice = True, None

    def __init__(self, inverted: list[np.ndarray]):
        self.inverted = {image.tobytes() for image in inverted}

    def check(self, images, original_sizes):
        from pneumo.models.quality import INVERTED, MESSAGES, QualityReport

        return [QualityReport(findings=[(INVERTED, MESSAGES[INVERTED])], corrected=image.copy())
                if image.tobytes() in self.inverted else QualityReport()
                for image in np.asarray(images)]


def _model_input(data: bytes) -> np.ndarray:
    from pneumo.reading import reader

    return reader.decode_file("x.png", data).model_input


def _scope_by_name(monkeypatch, prefix: str = "adult"):
    """Files whose name starts with ``prefix`` are out of scope (the pixel check's verdict)."""
    from pneumo.app import ui
    from pneumo.reading import scope

    verdict = scope.Verdict(scope.LOOKS_OLDER, scope.REASONS[scope.LOOKS_OLDER])
    monkeypatch.setattr(ui, "ood_detector", lambda: None)  # synthetic films: no other verdict
    monkeypatch.setattr(ui, "scope_check",
                        lambda: lambda r: verdict if r.name.startswith(prefix) else None)
    return verdict


def test_out_of_scope_card_withholds_the_reading_until_asked(monkeypatch):
    from pneumo.app import ui

    verdict = _scope_by_name(monkeypatch)
    at = _app()
    at.file_uploader[0].set_value(("adult.png", png_bytes(synthetic_xray(300, 30)),
                                   "image/png")).run()
    _set_threshold(at, 0.0)  # at or above: a trusted reading would show its badge and heat map
    assert not at.exception, at.exception
    assert verdict.reason in [e.value for e in at.error]  # why, in one sentence, as an error
    assert _badges(at) == [] and _shown_texts(at) == []  # no decision, no big probability
    assert not any("overlay" in c for c in _captions(at))  # no heat map
    assert _captions(at).count("As uploaded: no reading shown") == 1  # the film itself, greyed

    _toggle(at, "Show the reading anyway").set_value(True).run()
    assert not at.exception, at.exception
    assert len(_shown_texts(at)) == 1
    ((colour, text),) = _badges(at)
    assert colour == ui.MUTED_COLOUR and text.endswith("outside the validated population")
    assert any(ui.OUTSIDE_POPULATION in md.value for md in at.markdown if "Reading" in md.value)
    assert not any("inside the lungs" in md.value for md in at.markdown)


def test_a_non_xray_gets_no_correction_button_and_no_lung_share(monkeypatch):
    from pneumo.app import ui
    from pneumo.models import ood

    data = png_bytes(synthetic_xray(300, 31))
    seg = _CamSegmenter(True)
    monkeypatch.setattr(ui, "segmenter", lambda: seg)
    monkeypatch.setattr(ui, "scope_check", lambda: None)
    monkeypatch.setattr(ui, "ood_detector", lambda: lambda r: ood.WARNING)
    monkeypatch.setattr(ui, "quality_checker", lambda: _FlaggingChecker([_model_input(data)]))
    at = _app()
    at.file_uploader[0].set_value(("cat.png", data, "image/png")).run()
    _set_threshold(at, 0.0)
    assert ood.WARNING in [e.value for e in at.error]
    _toggle(at, "Show the reading anyway").set_value(True).run()
    assert not at.exception, at.exception
    assert len(_shown_texts(at)) == 1 and _badge_colours(at) == [ui.MUTED_COLOUR]
    assert not any(b.label.startswith("Read ") for b in at.button)  # nothing to turn back
    assert not any("inside the lungs" in md.value for md in at.markdown)
    assert not any("inverted" in w.value for w in at.warning)


def test_doubtful_card_is_greyed_and_its_decision_qualified(monkeypatch):
    from pneumo.app import ui

    data = png_bytes(synthetic_xray(300, 32))
    monkeypatch.setattr(ui, "scope_check", lambda: None)
    monkeypatch.setattr(ui, "ood_detector", lambda: None)
    monkeypatch.setattr(ui, "quality_checker", lambda: _FlaggingChecker([_model_input(data)]))
    at = _app()
    at.file_uploader[0].set_value(("inv.png", data, "image/png")).run()
    for t in (0.0, 1.0):
        _set_threshold(at, t)
        ((colour, text),) = _badges(at)
        assert colour == ui.MUTED_COLOUR
        assert text == ("PNEUMONIA" if t == 0.0 else "NORMAL") + " as uploaded \u2014 doubtful"
    assert [b.label for b in at.button if b.label.startswith("Read ")] == ["Read the inverted image"]


def test_worklist_lists_flagged_films_first_never_with_a_bare_decision(monkeypatch):
    from pneumo.app import ui
    from pneumo.reading import reader

    trusted = [png_bytes(synthetic_xray(300, 40 + i)) for i in range(5)]
    doubtful = png_bytes(synthetic_xray(300, 50))
    adult = png_bytes(synthetic_xray(300, 51))
    _scope_by_name(monkeypatch)
    monkeypatch.setattr(ui, "quality_checker", lambda: _FlaggingChecker([_model_input(doubtful)]))
    at = _app()
    at.file_uploader[0].set_value(
        [(f"t{i}.png", d, "image/png") for i, d in enumerate(trusted[:3])]
        + [("inv.png", doubtful, "image/png"), ("adult.png", adult, "image/png"),
           ("broken.png", b"not an image", "image/png")]
        + [(f"t{i}.png", d, "image/png") for i, d in enumerate(trusted[3:], 3)]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["trust"][:3]) == ["Doubtful", "Out of scope", "Not read"]
    assert set(table["trust"][3:]) == {"Trusted"}
    assert list(table["file"][:3]) == ["inv.png", "adult.png", "broken.png"]
    for _, row in table.iterrows():
        bare = row["decision"] in ("NORMAL", "PNEUMONIA")
        assert bare == (row["trust"] == "Trusted"), row.to_dict()
        if row["trust"] != "Trusted":  # a trusted film is flagged only by a split vote
            assert row["reason"], row.to_dict()
        else:
            assert not row["reason"] or "models disagree" in row["reason"], row.to_dict()
    assert table["probability"][1] != table["probability"][1]  # out of scope: withheld (NaN)
    assert at.dataframe[0].proto.placeholder == "\u2014"  # shown as a dash, not "None"
    rest = list(table["probability"][3:])
    assert rest == sorted(rest, reverse=True)  # then the highest probability first
    assert table["probability"].dtype.kind == "f"  # a number, shown as text
    # each card is linked from its row; the flagged ones are listed with their reason in full
    cards = next(md.value for md in at.markdown if md.value.startswith("**Cards**"))
    anchors = re.findall(r"\(#(card-[^)]+)\)", cards)
    assert len(anchors) == 7  # every readable film, none for the broken file
    headers = [h.proto.anchor for h in at.subheader if h.proto.anchor.startswith("card-")]
    assert anchors == headers  # each link lands on its card, cards in the worklist's order
    flagged = next(md.value for md in at.markdown if md.value.startswith("**Flagged**"))
    assert "inv.png" in flagged.replace("\\", "") and "adult.png" in flagged.replace("\\", "")
    # the filter
    at.toggle(key="flagged_only").set_value(True).run()
    assert list(at.dataframe[0].value["file"]) == ["inv.png", "adult.png", "broken.png"]
    # the CSV keeps the batch command's columns
    assert list(ui.csv_rows([{k: None for k in reader.RESULT_COLUMNS} | {"extra": 1}])[0]) == \
        list(reader.RESULT_COLUMNS)


def test_readings_survive_a_page_change_without_reading_again(synthetic_films):
    from pneumo.app import ui

    queue = ui.explainer()
    at = _app()
    files = [(f"s{i}.png", png_bytes(synthetic_xray(280, 60 + i)), "image/png") for i in range(3)]
    at.file_uploader[0].set_value(files).run()
    assert queue.wait_ready(300)
    before_batches, before = sum(queue.batches), _shown_texts(at)
    assert len(before) == 3

    at.switch_page(EXPLORER_PAGE).run()
    _set_threshold(at, 0.3)
    at.switch_page(READ_PAGE).run()
    assert not at.exception, at.exception
    assert _shown_texts(at) == before  # every reading back, in the same order
    assert sum(queue.batches) == before_batches  # and none read again
    assert len(at.dataframe) == 1
    assert any("no longer in the upload box" in c.value for c in at.caption)

    # the box is empty now; a file added and removed again is forgotten, the others stay
    extra = ("extra.png", png_bytes(synthetic_xray(280, 70)), "image/png")
    at.file_uploader[0].set_value([extra]).run()
    assert len(_shown_texts(at)) == 4
    at.file_uploader[0].set_value([]).run()
    assert len(_shown_texts(at)) == 3
    next(b for b in at.button if b.label == "Forget these readings").click().run()
    assert _shown_texts(at) == [] and any("No images yet" in i.value for i in at.info)
    assert at.session_state[ui.READINGS_KEY] == {}


def test_a_direct_first_visit_to_the_explorer_builds_the_whole_app():
    """A bookmarked /threshold_explorer opened before the home page: Streamlit would run the
    page alone (its pages/ folder listing); it gets the app's sidebar and notes all the same."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.switch_page(EXPLORER_PAGE).run()
    assert not at.exception, at.exception
    assert [s.label for s in at.sidebar.slider] == ["Decision threshold on P(pneumonia)"]
    assert any("not a diagnosis" in c.value for c in at.sidebar.caption)
    assert [t.value for t in at.title] == ["Threshold explorer"]  # the page, once
    assert _caption_counts(at)  # and its content
    at.run()
    assert [s.label for s in at.sidebar.slider] == ["Decision threshold on P(pneumonia)"]


def test_explorer_prevalence_gives_ppv_and_npv():
    from pneumo.app.charts import predictive_values
    from pneumo.evaluation.artifacts import read_predictions

    test = read_predictions("test")
    at = _app()
    at.switch_page(EXPLORER_PAGE).run()
    _set_threshold(at, 0.5)
    box = at.number_input(key="prevalence_input")
    assert box.value == pytest.approx(round(test.label.mean() * 100, 1))  # the test split's
    box.set_value(10.0).run()
    rates = m.rates(m.confusion(test.label, test.probability, 0.5))
    ppv, npv = predictive_values(rates["sensitivity"], rates["specificity"], 0.10)
    shown = {x.label: x.value for x in at.metric}
    assert shown["PPV at 10.0% prevalence"] == f"{ppv:.1%}"
    assert shown["NPV at 10.0% prevalence"] == f"{npv:.1%}"
    labels = [b.label for b in at.button if b.key and b.key.startswith("preset-")]
    default = [label for label in labels if "default" in label]
    assert len(default) == 1 and not default[0].startswith("0.5")  # the slider starts there


def test_empty_heat_map_and_the_lung_caution_only_at_or_above_the_threshold():
    from pneumo.app import ui
    from pneumo.models.lungs import OUTSIDE_LUNGS_CAUTION
    from pneumo.reading.reader import Reading

    r = Reading(name="n.png", digest="0" * 64, probability=0.3,
                cams={"Grad-CAM": np.zeros((7, 7)), "Grad-CAM++": np.full((7, 7), 0.2)},
                lung_share={"Grad-CAM++": 0.2})
    assert ui.empty_heat_map(r, "Grad-CAM") == wording.EMPTY_HEAT_MAP.format(method="Grad-CAM")
    assert "Nothing in this film raised the score" in ui.empty_heat_map(r, "Grad-CAM")
    assert ui.empty_heat_map(r, "Grad-CAM++") is None
    assert ui.lung_lines(r, "Grad-CAM++", 0.5) == (wording.lung_share_text(0.2), None)  # below
    assert ui.lung_lines(r, "Grad-CAM++", 0.3) == (wording.lung_share_text(0.2),
                                                    OUTSIDE_LUNGS_CAUTION)  # at the threshold


def test_two_correction_clicks_in_quick_succession_both_count(shared_data):
    """#21: two correction buttons clicked 0.6 s apart lost one (the second click's rerun
    interrupted the first's). The clicks are now requests kept in the session: both are read."""
    from pneumo.io.images import load_image
    from pneumo.models import quality

    _quality_model()
    paths = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    files = [(f"turned{i}.png", png_bytes(quality.apply(load_image(p), "rot90")), "image/png")
             for i, p in enumerate(paths)]
    at = _app()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    buttons = [b for b in at.button if b.label == "Read it turned the right way"]
    assert len(buttons) == 2
    buttons[0].click()
    buttons[1].click()  # both before the app runs again: one rerun for two clicks
    at.run()
    assert not at.exception, at.exception
    assert not any(b.label == "Read it turned the right way" for b in at.button)
    assert [i.value for i in at.info].count(quality.correction_note(["rot90"])) == 2


def test_the_worklist_shows_a_dash_where_a_reading_is_withheld_or_missing():
    """Streamlit showed 'None' for an empty display value; the table says '\u2014' instead."""
    from pneumo.app import ui
    from pneumo.reading import reader

    readings = [reader.Reading(name="photo.jpg", digest="a", probability=0.9,
                               ood_warning="This does not look like a chest X-ray."),
                reader.Reading(name="broken.png", digest="b", error="not an image"),
                reader.Reading(name="child.png", digest="c", probability=0.2)]
    table, _ = ui.worklist_table(reader.worklist_rows(readings, 0.5), readings)
    html = table.to_html()
    cells = re.findall(r'<td id="T_\w+_row\d+_col1"[^>]*>([^<]*)</td>', html)  # the probability
    assert len(cells) == 3 and cells.count(ui.NO_VALUE) == 2, cells
    assert "None" not in cells and "" not in cells
