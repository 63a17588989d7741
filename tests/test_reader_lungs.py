"""Lung fields in the batch reader and the Read page's images, with stand-in model and segmenter.

No trained weights needed: the explainer and the segmenter are test doubles with known outputs,
so every share and warning here is known in advance.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import png_bytes, synthetic_xray

from pneumo import config
from pneumo.app import ui
from pneumo.models.explain import METHODS, Explanation, heatmap_strength
from pneumo.models.lungs import NO_LUNGS_WARNING, OUTSIDE_LUNGS_CAUTION, LungFields, heatmap_in_lungs
from pneumo.reading import reader

SIZE = config.IMAGE_SIZE
TOP_CAM = np.zeros((7, 7), "float32")
TOP_CAM[:2, :] = 1.0  # all heat at the top edge
BOTTOM_CAM = TOP_CAM[::-1].copy()  # all heat at the bottom edge


def top_lungs(area: float = 0.5) -> LungFields:
    """A mask over the top ``area`` of the image (as much on its left half as on its right, as
    a pair of lungs has: a mask on one half only is "one lung field")."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:round(SIZE * area), :] = True
    return LungFields(mask=mask, area=float(mask.mean()), components=2 if area > 0 else 0)


class Explainer:
    """Probability 0.8; Grad-CAM heat at the top, Grad-CAM++ at the bottom."""

    def explain(self, images):
        return [Explanation(0.8, {METHODS[0]: TOP_CAM, METHODS[1]: BOTTOM_CAM}, np.zeros(4))
                for _ in images]


class Segmenter:
    """Top-half lungs; records batch sizes; can fail on batches, or on chosen images."""

    def __init__(self, fields: LungFields | None = None, fail_batches: bool = False,
                 fail_if=None):
        self.fields_out = fields or top_lungs()
        self.fail_batches, self.fail_if = fail_batches, fail_if
        self.calls: list[int] = []

    def fields(self, images):
        self.calls.append(len(images))
        if self.fail_batches and len(images) > 1:
            raise RuntimeError("batch failed")
        if self.fail_if is not None and any(self.fail_if(im) for im in images):
            raise RuntimeError("image failed")
        return [self.fields_out for _ in images]


def files(n: int) -> list[tuple[str, bytes]]:
    return [(f"x{i}.png", png_bytes(synthetic_xray(240, i))) for i in range(n)]


def test_lung_share_per_method_batched_like_the_explainer():
    seg = Segmenter()
    readings = reader.read_batch(files(5) + [("bad.png", b"")], Explainer(), batch_size=2,
                                 segmenter=seg)
    assert seg.calls == [2, 2, 1]  # once per batch, unreadable file left out
    good = [r for r in readings if r.ok]
    assert len(good) == 5 and readings[-1].error
    mask = top_lungs().mask
    for r in good:
        assert r.lungs is seg.fields_out and r.lung_warning is None
        assert r.lung_share[METHODS[0]] == pytest.approx(heatmap_in_lungs(TOP_CAM, mask)[0])
        assert r.lung_share[METHODS[0]] > 0.95  # heat at the top, lungs at the top
        assert r.lung_share[METHODS[1]] < 0.05
    assert readings[-1].lungs is None and readings[-1].lung_share == {}


def test_without_segmenter_there_are_no_lung_figures():
    r = reader.read_batch(files(1), Explainer())[0]
    assert r.ok and r.lungs is None and r.lung_share == {} and r.lung_warning is None


def test_implausible_mask_is_a_warning_apart_from_ood():
    seg = Segmenter(fields=top_lungs(0.03))  # 3 % of the image: not a pair of lungs
    r = reader.read_batch(files(1), Explainer(), segmenter=seg, ood_check=lambda _: None)[0]
    assert r.lung_warning == NO_LUNGS_WARNING
    assert r.ood_warning is None
    assert r.lung_share == {}  # a share against an implausible mask means nothing
    row = reader.worklist_rows([r], 0.5)[0]
    assert NO_LUNGS_WARNING in row["warning"]


def test_segmenter_failure_never_stops_the_reading():
    always = Segmenter(fail_if=lambda im: True)
    readings = reader.read_batch(files(3), Explainer(), segmenter=always)
    assert all(r.ok and r.lungs is None and r.lung_share == {} for r in readings)
    # a failing batch is retried image by image
    seg = Segmenter(fail_batches=True)
    readings = reader.read_batch(files(3), Explainer(), segmenter=seg)
    assert seg.calls == [3, 1, 1, 1]
    assert all(r.lungs is not None for r in readings)
    # only the image the segmenter chokes on loses its lung figures
    first = reader.decode_file(*files(1)[0]).model_input
    picky = Segmenter(fail_if=lambda im: np.array_equal(im, first))
    readings = reader.read_batch(files(3), Explainer(), segmenter=picky)
    assert [r.lungs is None for r in readings] == [True, False, False]
    assert all(r.ok for r in readings)


def test_worklist_shows_probability_text_and_keeps_the_number():
    readings = reader.read_batch(files(1), Explainer())
    readings[0].probability = 0.99995
    row = reader.worklist_rows(readings, 0.5)[0]
    assert row["probability"] == "> 99 %"
    assert row["probability_pneumonia"] == 1.0  # the CSV keeps the number


# --- the Read page's images (ui.card_images) ---

def _reading(probability: float, lungs: LungFields | None = None) -> reader.Reading:
    grey = np.tile(np.linspace(40, 200, 160, dtype="uint8"), (120, 1))
    return reader.Reading(name="x.png", digest="d", display=np.repeat(grey[..., None], 3, -1),
                          probability=probability, cams={METHODS[0]: TOP_CAM}, lungs=lungs)


def colour(rgb: np.ndarray) -> int:
    """Largest channel spread of any pixel: 0 for a grey image."""
    rgb = rgb.astype(int)
    return int((rgb.max(-1) - rgb.min(-1)).max())


def test_low_probability_heat_map_hidden_unless_asked_then_faint():
    low, high = _reading(0.05), _reading(0.95)
    hidden = ui.card_images(low, METHODS[0], 0.6, threshold=0.5)
    assert hidden.overlay is None and "hidden" in hidden.caption
    assert colour(hidden.original) == 0  # no colour anywhere on the card
    asked = ui.card_images(low, METHODS[0], 0.6, threshold=0.5, show_below_threshold=True)
    strong = ui.card_images(high, METHODS[0], 0.6, threshold=0.5)
    assert asked.strength == pytest.approx(config.HEATMAP_MIN_STRENGTH)
    assert strong.strength == 1.0 and "faint" not in strong.caption and "faint" in asked.caption
    assert 0 < colour(asked.overlay) < colour(strong.overlay)
    # the faint map differs from the radiograph by at most its reduced opacity of the colour
    diff = np.abs(asked.overlay.astype(int) - low.display.astype(int)).max()
    assert diff <= np.ceil(255 * 0.6 * config.HEATMAP_MIN_STRENGTH) + 1
    # at or above the threshold the heat map is always shown, at the chosen opacity
    assert ui.card_images(_reading(0.5), METHODS[0], 0.6, threshold=0.5).strength == 1.0


def test_heatmap_strength():
    assert heatmap_strength(0.9, 0.5) == 1.0
    assert heatmap_strength(0.5, 0.5) == 1.0
    assert heatmap_strength(0.4, 0.5) == pytest.approx(0.8)
    assert heatmap_strength(0.01, 0.5) == pytest.approx(config.HEATMAP_MIN_STRENGTH)


def test_lung_outline_drawn_on_original_and_overlay_only_when_asked():
    lungs = top_lungs(0.4)
    r = _reading(0.9, lungs)
    edge = lungs.outline(*r.display.shape[:2])
    assert edge.any()
    on = ui.card_images(r, METHODS[0], 0.6, 0.5, outline=True)
    off = ui.card_images(r, METHODS[0], 0.6, 0.5, outline=False)
    for img in (on.original, on.overlay):
        assert (img[edge] == config.LUNG_OUTLINE_RGB).all()
    assert np.array_equal(on.original[~edge], r.display[~edge])
    assert not (off.original == config.LUNG_OUTLINE_RGB).all(-1).any()
    assert not (off.overlay == config.LUNG_OUTLINE_RGB).all(-1).any()
    # no lung fields known: nothing drawn, no error
    bare = ui.card_images(_reading(0.9), METHODS[0], 0.6, 0.5, outline=True)
    assert np.array_equal(bare.original, r.display)


def test_lung_lines():
    r = _reading(0.9)
    assert ui.lung_lines(r, METHODS[0]) == (None, None)
    r.lung_share = {METHODS[0]: 0.3, METHODS[1]: 0.8}
    assert ui.lung_lines(r, METHODS[0]) == ("Heat map inside the lungs: 30 %", OUTSIDE_LUNGS_CAUTION)
    assert ui.lung_lines(r, METHODS[1]) == ("Heat map inside the lungs: 80 %", None)
