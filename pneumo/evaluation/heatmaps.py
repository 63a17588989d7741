"""Do the heat maps follow the film? Measures over coarse maps (issue #25, step 0).

Pure functions over heat maps of any grid (pneumo's Grad-CAM maps are 7x7, 0..1): ``(H, W)`` for
one film or ``(N, H, W)`` for a batch. "Left" and "right" are always the *image's* halves (the
image-right half is the patient's left). Nothing here loads a model: the forward pass that
occlusion needs is a callable.

Definitions:

- :func:`correlation`: Pearson correlation of two maps over their H*W cells. It is undefined
  (NaN) when either map is constant, e.g. an all-zero map (nothing raised the score anywhere,
  common on NORMAL films). :func:`summary` leaves NaNs out of the mean and counts them.
- :func:`flip_equivariance`: correlation of the mirrored film's map with the mirror of the
  film's own map (1 = the map follows the flip exactly).
- :func:`unflipped_correlation`: correlation of the mirrored film's map with the film's own map,
  unmirrored (high = the map stays where it was, whatever the film).
- :func:`side_masses` / :func:`heavier_side`: the map's mass on the image-left columns
  ``[0, W//2)`` and the image-right columns ``[ceil(W/2), W)``; for an odd width the middle
  column belongs to neither half. With a lung mask, each cell's value is weighted by the share
  of the cell that lies in the lung fields (the mask area-averaged to the map grid,
  :func:`lung_grid`), so the masses are the map's mass inside each lung field. Equal masses
  (a symmetric or empty map) are a tie: no heavier side.
- :func:`side_preference`: share of films heavier on the image-right half, among films with a
  heavier side.
- :func:`peak_side`: which half holds the map's maximum cell ("middle" for the middle column of
  an odd width; none for a constant map).
- :func:`diversity`: mean correlation of each map with the mean map of all the films given
  (1 = the same picture every time).
- :func:`member_agreement`: share of films on which two models' maps are heavier on the same
  half, among films where both have a heavier side.
- :func:`occlusion_faithfulness`: share of films where blurring the region the map favours
  (its heavier image half, or the lung field in that half when masks are given) lowers the
  logit more than blurring the same region on the other side, among films with a heavier side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from pneumo import config
from pneumo.data.lung_masks import resize_mask

LEFT, RIGHT, MIDDLE = "left", "right", "middle"
BLUR_SIGMA_OF_WIDTH = 1 / 14  # Gaussian sigma as a share of the image width: 16 px at 224 px
TIE_RTOL = 1e-9


def _batch(maps) -> tuple[np.ndarray, bool]:
    """(N, H, W) float64 and whether the input was a single (H, W) map."""
    m = np.asarray(maps, dtype="float64")
    if m.ndim == 2:
        return m[None], True
    if m.ndim != 3:
        raise ValueError(f"heat maps must be (H, W) or (N, H, W), got shape {m.shape}")
    return m, False


def mirror(maps) -> np.ndarray:
    """Maps mirrored left-right (the last axis), one map or a batch."""
    return np.flip(np.asarray(maps), axis=-1)


def correlation(a, b) -> float | np.ndarray:
    """Pearson correlation per pair of maps over their cells; NaN where either map is constant.

    ``a`` and ``b``: (H, W) -> float, or (N, H, W) -> (N,).
    """
    x, single = _batch(a)
    y, _ = _batch(b)
    if x.shape != y.shape:
        raise ValueError(f"maps of different shapes: {x.shape} and {y.shape}")
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    r = np.where(constant, np.nan, np.clip(r, -1.0, 1.0))
    return float(r[0]) if single else r


def flip_equivariance(map_of_flipped, map_of_original) -> float | np.ndarray:
    """Correlation of the mirrored film's map with the mirror of the original film's map."""
    return correlation(map_of_flipped, mirror(map_of_original))


def unflipped_correlation(map_of_flipped, map_of_original) -> float | np.ndarray:
    """Correlation of the mirrored film's map with the original film's map as it is."""
    return correlation(map_of_flipped, map_of_original)


def summary(values) -> dict:
    """Mean of per-film values with NaN (undefined) left out: {mean, n, undefined}."""
    v = np.asarray(values, dtype="float64").ravel()
    defined = ~np.isnan(v)
    return {"mean": float(v[defined].mean()) if defined.any() else float("nan"),
            "n": int(defined.sum()), "undefined": int((~defined).sum())}


def lung_grid(lung_mask, height: int, width: int) -> np.ndarray:
    """The share (0..1) of each cell of an (height, width) grid that lies in the lung fields.

    ``lung_mask``: (h, w) bool or 0..1, any size; a mask already at the grid's size is used as
    it is. A larger mask is area-averaged to the grid (a 224 px mask on a 7x7 grid: the mean
    of each 32x32 block); a smaller one is resized bilinearly.
    """
    m = np.asarray(lung_mask, dtype="float32")
    if m.shape == (height, width):
        return m.astype("float64")
    interpolation = cv2.INTER_AREA if m.shape[0] >= height else cv2.INTER_LINEAR
    return cv2.resize(m, (width, height), interpolation=interpolation).clip(0, 1).astype("float64")


def side_masses(heat_map, lung_mask=None) -> tuple[float, float]:
    """(mass on the image-left half, mass on the image-right half) of one (H, W) map.

    The middle column of an odd width counts for neither. With ``lung_mask``, only the mass
    inside the lung fields (see :func:`lung_grid`).
    """
    m = np.asarray(heat_map, dtype="float64")
    if m.ndim != 2:
        raise ValueError(f"one (H, W) map expected, got shape {m.shape}")
    h, w = m.shape
    if lung_mask is not None:
        m = m * lung_grid(lung_mask, h, w)
    return float(m[:, : w // 2].sum()), float(m[:, (w + 1) // 2:].sum())


def heavier_side(heat_map, lung_mask=None) -> str | None:
    """"left" or "right": the image half with more of the map's mass (inside the lung fields
    when ``lung_mask`` is given); None for a tie (equal within 1e-9, e.g. an empty map)."""
    left, right = side_masses(heat_map, lung_mask)
    if np.isclose(left, right, rtol=TIE_RTOL, atol=1e-12):
        return None
    return RIGHT if right > left else LEFT


def heavier_sides(maps, lung_masks=None) -> list[str | None]:
    """:func:`heavier_side` of each map of a batch (``lung_masks``: one per map, or None)."""
    m, _ = _batch(maps)
    masks = [None] * len(m) if lung_masks is None else lung_masks
    if len(masks) != len(m):
        raise ValueError("one lung mask per map")
    return [heavier_side(x, k) for x, k in zip(m, masks)]


def side_preference(maps, lung_masks=None) -> float:
    """Share of films whose map is heavier on the image-right half, among films with a heavier
    side (ties left out); NaN when no film has one."""
    return side_share(heavier_sides(maps, lung_masks))


def side_share(sides: Sequence[str | None]) -> float:
    """Share of "right" among the sides that are not None (NaN when none is)."""
    decided = [s for s in sides if s is not None]
    return float(np.mean([s == RIGHT for s in decided])) if decided else float("nan")


def side_counts(sides: Sequence[str | None]) -> dict:
    """{right_share, right, left, ties} for a list of sides (None = tie, or no peak)."""
    counts = Counter(sides)
    return {"right_share": side_share(sides), "right": counts.get(RIGHT, 0),
            "left": counts.get(LEFT, 0), "middle": counts.get(MIDDLE, 0),
            "none": counts.get(None, 0)}


def peak_side(heat_map) -> str | None:
    """The half holding the map's maximum cell (the first one, row-major, on equal maxima):
    "left", "right", or "middle" (the middle column of an odd width); None for a constant map."""
    m = np.asarray(heat_map, dtype="float64")
    if np.ptp(m) == 0:
        return None
    w = m.shape[1]
    col = int(np.unravel_index(int(np.argmax(m)), m.shape)[1])
    if w % 2 and col == w // 2:
        return MIDDLE
    return LEFT if col < w // 2 else RIGHT


def peak_cells(maps) -> Counter:
    """How many maps peak in each cell (row, column); constant maps are left out."""
    m, _ = _batch(maps)
    return Counter(tuple(int(i) for i in np.unravel_index(int(np.argmax(x)), x.shape))
                   for x in m if np.ptp(x) > 0)


def correlations_with_mean(maps) -> np.ndarray:
    """(N,) correlation of each map with the mean map of the batch (NaN for a constant map)."""
    m, _ = _batch(maps)
    mean = np.broadcast_to(m.mean(axis=0), m.shape)
    return np.atleast_1d(correlation(m, mean))


def diversity(maps) -> float:
    """Mean correlation of each map with the mean map (constant maps left out; NaN if all are)."""
    return summary(correlations_with_mean(maps))["mean"]


def agreements(maps_a, maps_b, lung_masks=None) -> np.ndarray:
    """(N,) per film: 1.0 when both models' maps are heavier on the same half, 0.0 when on
    different halves, NaN when either has no heavier side."""
    a = heavier_sides(maps_a, lung_masks)
    b = heavier_sides(maps_b, lung_masks)
    if len(a) != len(b):
        raise ValueError("two models' maps of the same films expected")
    return np.array([np.nan if x is None or y is None else float(x == y) for x, y in zip(a, b)])


def member_agreement(maps_a, maps_b, lung_masks=None) -> float:
    """Share of films where two models' maps are heavier on the same image half (inside the
    lung fields with ``lung_masks``), among films where both have a heavier side."""
    return summary(agreements(maps_a, maps_b, lung_masks))["mean"]


def half_region(side: str, height: int, width: int, lung_mask=None) -> np.ndarray:
    """(height, width) bool: the image-left or image-right half, intersected with the lung
    fields when ``lung_mask`` is given (resized to the image with
    :func:`pneumo.data.lung_masks.resize_mask`)."""
    region = np.zeros((height, width), bool)
    if side == LEFT:
        region[:, : width // 2] = True
    elif side == RIGHT:
        region[:, (width + 1) // 2:] = True
    else:
        raise ValueError(f"side must be {LEFT!r} or {RIGHT!r}, got {side!r}")
    if lung_mask is not None:
        region &= resize_mask(lung_mask, height, width)
    return region


def blur_region(image: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """A copy of ``image`` (H, W[, C]) with the pixels in ``region`` replaced by a Gaussian blur
    (sigma in pixels) of the whole image, so the blurred area keeps its neighbourhood's
    brightness and loses its texture."""
    img = np.asarray(image)
    blurred = cv2.GaussianBlur(img.astype("float32"), (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT)
    out = img.astype("float32").copy()
    out[region] = blurred[region]
    return np.round(out).astype(img.dtype) if img.dtype == np.uint8 else out.astype(img.dtype)


def occlusion_logits(images, maps, logits: Callable[[np.ndarray], np.ndarray], lung_masks=None,
                     sigma: float | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per film: the side the map favours and the logits with each side's region blurred.

    ``images`` (N, H, W, C) as the model takes them; ``maps`` (N, h, w); ``logits`` maps a batch
    of images to (N,) logits; ``lung_masks`` (N, H', W') or None (then the regions are whole
    image halves); ``sigma`` defaults to :data:`BLUR_SIGMA_OF_WIDTH` of the image width.
    Returns {"favoured": sides (None: no heavier side), "favoured_blurred", "other_blurred"}
    with NaN logits where no side is favoured (those films are not run).
    """
    images = np.asarray(images)
    n, height, width = images.shape[:3]
    sigma = float(sigma if sigma is not None else BLUR_SIGMA_OF_WIDTH * width)
    masks = [None] * n if lung_masks is None else lung_masks
    favoured = heavier_sides(maps, masks)
    fav_logit = np.full(n, np.nan)
    other_logit = np.full(n, np.nan)
    todo = [i for i in range(n) if favoured[i] is not None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = []
        for i in chunk:
            other = LEFT if favoured[i] == RIGHT else RIGHT
            for side in (favoured[i], other):
                batch.append(blur_region(images[i], half_region(side, height, width, masks[i]),
                                         sigma))
        out = np.asarray(logits(np.stack(batch)), dtype="float64").reshape(-1)
        fav_logit[chunk], other_logit[chunk] = out[0::2], out[1::2]
    return {"favoured": np.array(favoured, dtype=object), "favoured_blurred": fav_logit,
            "other_blurred": other_logit}


def faithful(occlusion: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) from :func:`occlusion_logits`: 1.0 where blurring the favoured side gave the lower
    logit (lowered it more), 0.0 where not, NaN where the map favours no side."""
    fav, other = occlusion["favoured_blurred"], occlusion["other_blurred"]
    return np.where(np.isnan(fav) | np.isnan(other), np.nan, (fav < other).astype("float64"))


def occlusion_faithfulness(images, maps, logits: Callable[[np.ndarray], np.ndarray],
                           lung_masks=None, sigma: float | None = None,
                           batch_size: int = 32) -> float:
    """Share of films where blurring the region the map favours lowers the logit more than
    blurring the other side's (films whose map favours no side are left out)."""
    return summary(faithful(occlusion_logits(images, maps, logits, lung_masks, sigma,
                                             batch_size)))["mean"]


def class_report(maps, flipped_maps, lung_masks=None, occlusion: dict | None = None,
                 occlusion_lungs: dict | None = None) -> dict:
    """Every measure above for one group of films (e.g. one class of one split).

    ``maps`` and ``flipped_maps`` (N, h, w): each film's map and its mirrored film's map;
    ``lung_masks`` of the original films (the mirrored film's masks are their mirrors);
    ``occlusion`` / ``occlusion_lungs``: :func:`occlusion_logits` with image halves / lung fields.
    """
    m, _ = _batch(maps)
    f, _ = _batch(flipped_maps)
    out: dict = {"n": int(len(m)),
                 "flip_equivariance": summary(flip_equivariance(f, m)),
                 "unflipped_correlation": summary(unflipped_correlation(f, m)),
                 "side_preference": side_counts(heavier_sides(m)),
                 "side_preference_of_mirrored_films": side_counts(heavier_sides(f)),
                 "peak_side": side_counts([peak_side(x) for x in m]),
                 "peak_side_of_mirrored_films": side_counts([peak_side(x) for x in f]),
                 "diversity": summary(correlations_with_mean(m))}
    cells = peak_cells(m)
    if cells:
        cell, count = cells.most_common(1)[0]
        out["commonest_peak_cell"] = {"row": cell[0], "column": cell[1], "n": count}
    if lung_masks is not None:
        masks = list(lung_masks)
        out["side_preference_in_lungs"] = side_counts(heavier_sides(m, masks))
        out["side_preference_in_lungs_of_mirrored_films"] = side_counts(
            heavier_sides(f, [mirror(k) for k in masks]))
    for name, occ in (("occlusion_faithfulness", occlusion),
                      ("occlusion_faithfulness_lungs", occlusion_lungs)):
        if occ is not None:
            drop_fav = occ["favoured_blurred"]
            out[name] = {**summary(faithful(occ))}
            out[name]["mean_logit_gap"] = summary(occ["other_blurred"] - drop_fav)["mean"]
    return out


def agreement_report(maps_a, maps_b, lung_masks=None) -> dict:
    """:func:`member_agreement` on image halves and, with masks, inside the lung fields."""
    out = {"image_halves": summary(agreements(maps_a, maps_b))}
    if lung_masks is not None:
        out["lung_fields"] = summary(agreements(maps_a, maps_b, list(lung_masks)))
    return out


def pairwise_agreement(maps_by_member: dict[str, np.ndarray]) -> dict:
    """Agreement on the heavier image half for every pair of members (``member_agreement`` on
    image halves), with the mean and the lowest over the pairs."""
    names = list(maps_by_member)
    pairs = {f"{a} | {b}": summary(agreements(maps_by_member[a], maps_by_member[b]))
             for i, a in enumerate(names) for b in names[i + 1:]}
    means = [p["mean"] for p in pairs.values() if not np.isnan(p["mean"])]
    return {"pairs": pairs, "mean": float(np.mean(means)) if means else float("nan"),
            "lowest": float(np.min(means)) if means else float("nan")}


def _pick(occlusion: dict | None, chosen: np.ndarray) -> dict | None:
    return None if occlusion is None else {k: v[chosen] for k, v in occlusion.items()}


def measure(images, labels, cams: Callable[[np.ndarray], np.ndarray],
            logits: Callable[[np.ndarray], np.ndarray], lung_masks=None,
            members: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
            sigma: float | None = None, batch_size: int = 32, maps=None) -> dict:
    """All the measures for one split, per class (``config.CLASS_NAMES``).

    ``images`` (N, H, W, C) as the model takes them and ``labels`` (N,); ``cams`` maps a batch of
    images to their (N, h, w) heat maps and ``logits`` to their (N,) logits (one model);
    ``lung_masks`` (N, H', W') of the films or None; ``members``: other models' ``cams`` by name,
    for :func:`member_agreement` with this one; ``maps``: the films' maps when they are already
    computed (``cams`` then runs on the mirrored films only). The mirrored film is
    ``np.flip(image, axis=1)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if not len(images):
        return {}
    maps = np.asarray(cams(images) if maps is None else maps)
    if len(maps) != len(images):
        raise ValueError("one heat map per film")
    flipped = np.asarray(cams(np.ascontiguousarray(images[:, :, ::-1])))
    occ = occlusion_logits(images, maps, logits, None, sigma, batch_size)
    occ_lungs = (occlusion_logits(images, maps, logits, lung_masks, sigma, batch_size)
                 if lung_masks is not None else None)
    member_maps = {name: np.asarray(fn(images)) for name, fn in (members or {}).items()}
    out: dict = {}
    for label, name in enumerate(config.CLASS_NAMES):
        chosen = np.flatnonzero(labels == label)
        if not len(chosen):
            continue
        masks = None if lung_masks is None else [lung_masks[i] for i in chosen]
        report = class_report(maps[chosen], flipped[chosen], masks, _pick(occ, chosen),
                              _pick(occ_lungs, chosen))
        if member_maps:
            report["member_agreement"] = {
                member: agreement_report(maps[chosen], other[chosen], masks)
                for member, other in member_maps.items()}
        if len(member_maps) >= 2:
            report["members_pairwise_agreement"] = pairwise_agreement(
                {k: v[chosen] for k, v in member_maps.items()})
        out[name] = report
    return out
