"""The app through Streamlit's AppTest: upload, threshold, presets, shared state, all pages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOT, png_bytes, synthetic_xray

from pneumo import config
from pneumo import metrics as m

pytestmark = pytest.mark.usefixtures("bundled_model_dir")

APP = str(ROOT / "streamlit_app.py")
READ_PAGE = "pages/read_xrays.py"
EXPLORER_PAGE = "pages/threshold_explorer.py"
CARD_PAGE = "pages/model_card.py"


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def _set_threshold(at, value: float) -> None:
    """Move the shared threshold as the sidebar slider's callback does.

    (AppTest drops the entry script's sidebar widgets from its element tree on reruns with
    st.navigation, so the slider itself is exercised by the browser test.)
    """
    at.session_state["threshold"] = value
    at.run()


def _expected_probability(data: bytes) -> float:
    from pneumo.images import load_image
    from pneumo.model import Predictor, load_model

    return float(Predictor(load_model()).predict(load_image(data)[None])[0])


def _shown_probabilities(at) -> list[float]:
    return [float(x.value.rstrip("%")) / 100 for x in at.metric
            if x.label == "Probability of pneumonia"]


def _decisions(at) -> list[str]:
    found = []
    for md in at.markdown:
        hit = re.search(r">(PNEUMONIA|NORMAL)</span>", md.value)
        if hit:
            found.append(hit.group(1))
    return found


def test_upload_shows_probability_overlay_and_errors():
    at = _app()
    good = png_bytes(synthetic_xray(300, 1))
    other = png_bytes(synthetic_xray(260, 2))
    at.file_uploader[0].set_value([
        ("first.png", good, "image/png"),
        ("empty.png", b"", "image/png"),
        ("second.png", other, "image/png"),
    ]).run()
    assert not at.exception, at.exception
    shown = _shown_probabilities(at)
    assert len(shown) == 2
    expected = sorted([_expected_probability(good), _expected_probability(other)], reverse=True)
    np.testing.assert_allclose(shown, expected, atol=0.0006)  # shown rounded to 0.1 %
    # original + overlay for each readable image, plus the colour-scale legend
    assert len(at.get("imgs")) >= 5 or len(at.image) >= 5
    assert any("empty.png" in e.value and "empty" in e.value.lower() for e in at.error)
    assert len(at.dataframe) == 1  # the worklist


def test_threshold_moves_the_decision():
    at = _app()
    data = png_bytes(synthetic_xray(300, 3))
    at.file_uploader[0].set_value(("x.png", data, "image/png")).run()
    p = _shown_probabilities(at)[0]
    below, above = max(p - 0.05, 0.0), min(p + 0.05, 1.0)
    _set_threshold(at, round(below, 3))
    assert _decisions(at) == ["PNEUMONIA"]
    _set_threshold(at, round(above, 3))
    assert _decisions(at) == ["NORMAL"]


def _caption_counts(at) -> tuple[int, int]:
    for c in at.caption:
        hit = re.search(r"(\d+) of \d+ pneumonia images missed, (\d+) of \d+ normal", c.value)
        if hit:
            return int(hit.group(1)), int(hit.group(2))
    raise AssertionError("confusion caption not found")


def test_explorer_confusion_counts_follow_the_threshold():
    from pneumo.evaluate import read_predictions

    test = read_predictions(config.weights_path(config.TEST_PREDICTIONS_FILE))
    at = _app()
    at.switch_page(EXPLORER_PAGE).run()
    assert not at.exception, at.exception
    for t in (0.2, 0.5, 0.9):
        _set_threshold(at, t)
        c = m.confusion(test["label"], test["probability"], t)
        assert _caption_counts(at) == (c["fn"], c["fp"])
    assert len(at.get("plotly_chart")) >= 7


def test_presets_set_the_shared_slider_and_other_pages_follow():
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
    p = _shown_probabilities(at)[0]
    assert _decisions(at) == ["PNEUMONIA" if p >= 0.5 else "NORMAL"]
    assert any("0.500" in md.value for md in at.markdown)


def test_model_card_renders():
    at = _app()
    at.switch_page(CARD_PAGE).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) >= 3
    assert any("not a diagnosis" in md.value for md in at.markdown)


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


def test_a_batch_writes_nothing_to_disk_and_connects_nowhere(monkeypatch, tmp_path):
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
    assert len(_shown_probabilities(at)) == 3
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
