"""How numbers are put into words for a person: probabilities, their test-set evidence, lung shares.

The one owner of the rule that a probability is never shown as "0 %" or "100 %": every page,
the worklist and anything else a person reads goes through :func:`probability_text`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from pneumo import config
from pneumo.reading.vote import Vote

LOW, HIGH = config.PROBABILITY_SHOWN_RANGE
# Bins for the evidence line: the two extremes as the probability text names them, deciles between.
EVIDENCE_EDGES = (0.0, LOW, *(i / 10 for i in range(1, 10)), HIGH, 1.0)


def percent(value: float) -> str:
    """0..1 -> whole percent with a space, rounded half up: 0.237 -> "24 %"."""
    return f"{math.floor(value * 100 + 0.5)} %"


def share_of(share: float, n: int) -> str:
    """A share of n counted things, count first: (0.997, 383) -> "382 of 383 (> 99 %)".

    "100 %" and "0 %" only when it is all or none of them, never from rounding."""
    if not n:
        return "-"
    k = math.floor(share * n + 0.5)
    return f"{k} of {n} ({percent(k / n) if k in (0, n) else probability_text(k / n)})"


def probability_text(probability: float | None) -> str:
    """A probability for a person: "< 1 %" and "> 99 %" at the extremes, whole percent between.

    None (nothing was read) gives "".
    """
    if probability is None or not math.isfinite(probability):
        return ""
    if probability < LOW:
        return f"< {percent(LOW)}"
    if probability > HIGH:
        return f"> {percent(HIGH)}"
    return percent(probability)


def evidence_bin(probability: float, scores: np.ndarray, edges: tuple[float, ...] = EVIDENCE_EDGES,
                 min_count: int = config.EVIDENCE_MIN_IMAGES) -> tuple[float, float]:
    """(low, high) edges of the bin holding ``probability``, widened one edge each side at a time
    until it holds at least ``min_count`` of ``scores`` (or spans 0..1).

    A bin is [low, high), except that the top one includes 1.
    """
    scores = np.asarray(scores, dtype="float64")
    last = len(edges) - 1
    lo = int(np.clip(np.searchsorted(edges, probability, side="right") - 1, 0, last - 1))
    hi = lo + 1
    while _in_bin(scores, edges[lo], edges[hi]).sum() < min_count and (lo > 0 or hi < last):
        lo, hi = max(lo - 1, 0), min(hi + 1, last)
    return edges[lo], edges[hi]


def _in_bin(scores: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (scores >= lo) & ((scores <= hi) if hi >= 1.0 else (scores < hi))


def _range_words(lo: float, hi: float) -> str:
    if lo <= 0.0 and hi >= 1.0:
        return "at any probability"
    if lo <= 0.0:
        return f"below {percent(hi)}"
    if hi >= 1.0:
        return f"{percent(lo)} or higher"
    return f"between {percent(lo)} and {percent(hi)}"


EVIDENCE_SOURCES = {"test": "On the official test set",
                    "site-sample": "In this site's calibration sample"}
EVIDENCE_GAP_POINTS = 15  # the observed share and the probability differ by more: say so


def _evidence_counts(probability: float, scores: np.ndarray, labels: np.ndarray,
                     min_count: int) -> tuple[float, float, int, int] | None:
    """(low, high, n, k) of the bin around ``probability``: n images in it, k with pneumonia."""
    scores, labels = np.asarray(scores, dtype="float64"), np.asarray(labels)
    if scores.size == 0:
        return None
    lo, hi = evidence_bin(probability, scores, min_count=min_count)
    chosen = _in_bin(scores, lo, hi)
    return lo, hi, int(chosen.sum()), int((labels[chosen] == 1).sum())


def evidence_line(probability: float, scores: np.ndarray, labels: np.ndarray,
                  min_count: int = config.EVIDENCE_MIN_IMAGES, source: str = "test") -> str:
    """"On the official test set, films scored like this one (between a and b) had pneumonia in
    k of N cases." for the bin around ``probability`` (see :func:`evidence_bin`); ``labels`` are
    1 for pneumonia. "" without scores. ``source`` names the images ("test"; "site-sample" for a
    site calibration's sample). The observed share stays beside the calibrated probability,
    never instead of it (nothing is fitted on the test split)."""
    found = _evidence_counts(probability, scores, labels, min_count)
    if found is None:
        return ""
    lo, hi, n, k = found
    cases = "case" if n == 1 else "cases"
    return (f"{EVIDENCE_SOURCES[source]}, films scored like this one ({_range_words(lo, hi)}) "
            f"had pneumonia in {k} of {n} {cases}.")


def evidence_gap(probability: float, scores: np.ndarray, labels: np.ndarray,
                 min_count: int = config.EVIDENCE_MIN_IMAGES, source: str = "test") -> str:
    """One plain sentence when the share with pneumonia among the images of
    :func:`evidence_line`'s bin differs from ``probability`` by more than
    :data:`EVIDENCE_GAP_POINTS` percentage points (the model's estimate runs high or low in this
    range on those images), else ""."""
    found = _evidence_counts(probability, scores, labels, min_count)
    if found is None or not math.isfinite(probability):
        return ""
    _, _, n, k = found
    gap = (probability - k / n) * 100
    if abs(gap) <= EVIDENCE_GAP_POINTS:
        return ""
    films = "test films" if source == "test" else "films of this site's sample"
    direction = "high" if gap > 0 else "low"
    more = "fewer" if gap > 0 else "more"
    return (f"On the {films} in this range the model's estimate runs {direction}: {more} of them "
            f"had pneumonia ({percent(k / n)}) than this probability says.")


EMPTY_HEAT_MAP = "Nothing in this film raised the score: the {method} map is empty."


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 image", "3 images"."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def files_read_text(n_new: int, n_unreadable: int, n_in_all: int | None = None) -> str:
    """The status line after reading the new files of a batch: "Read 3 images", "Read 1 new
    image; 2 in all", "Read 11 of 22 new files; 11 could not be read"."""
    new = "" if n_in_all is None or n_in_all <= n_new else "new "
    tail = f"; {n_in_all} in all" if new else ""
    if not n_unreadable:
        return f"Read {n_new} {new}{'image' if n_new == 1 else 'images'}{tail}"
    if n_unreadable == n_new:
        return f"Could not read {plural(n_new, new + 'file')}{tail}"
    return (f"Read {n_new - n_unreadable} of {n_new} {new}files; {n_unreadable} could not be "
            f"read{tail}")


def lung_share_text(share: float) -> str:
    """"Heat map inside the lungs: 73 %" (a measured share, so 0 % and 100 % can be said)."""
    return f"Heat map inside the lungs: {percent(share)}"


def lung_caution(share: float) -> str | None:
    """The caution when less than ``config.LUNG_CAUTION_SHARE`` of the heat map is in the lungs."""
    from pneumo.models.lungs import OUTSIDE_LUNGS_CAUTION

    return OUTSIDE_LUNGS_CAUTION if share < config.LUNG_CAUTION_SHARE else None


def heatmap_follow_text(follow: Mapping) -> str:
    """What the model card says of whether the heat maps follow the film (issue #25's measures),
    from ``metrics.json``'s ``heatmaps.follow_the_film``; "" without its PNEUMONIA test figures.

    The sentence that the maps do not localise an opacity is said whenever the maps look alike
    from film to film (diversity at or above ``config.HEATMAPS_ALIKE``)."""
    try:
        p = follow["test"]["PNEUMONIA"]
        alike, flip = float(p["diversity"]["mean"]), float(p["flip_equivariance"]["mean"])
        occlusion, n = float(p["occlusion_faithfulness"]["mean"]), int(p["n"])
    except (KeyError, TypeError, ValueError):
        return ""
    text = (f"On the {n} PNEUMONIA test films, a map follows its film when the film is mirrored "
            f"(correlation {flip:.2f}), and blurring the half the map favours lowers the score more "
            f"than blurring the other half for {percent(occlusion)} of films. But each map "
            f"correlates {alike:.2f} on average with the average map of all of them")
    if alike >= config.HEATMAPS_ALIKE:
        return (text + ": the maps look much alike from film to film. They say which lung "
                "weighed more, not where in it an opacity is: **do not use them to localise "
                "one.**")
    return text + "."


NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def number_word(n: int) -> str:
    """3 -> "three" (up to ten; digits beyond)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def ensemble_card_lines(members: Sequence[Mapping]) -> str:
    """The model card's Markdown lines about an ensemble's members ("" for a single model).

    ``members``: ``training.json``'s ``members`` (each with ``seed`` and ``val_log_loss``)."""
    if not members:
        return ""
    seeds = ", ".join(str(m["seed"]) for m in members)
    losses = [float(m["val_log_loss"]) for m in members]
    return (f"- **Ensemble**: {number_word(len(members))} members of one recipe (seeds {seeds}), "
            f"each with its own Platt calibration on validation (log loss {min(losses):.4f}-"
            f"{max(losses):.4f}). The probability is the mean of their uncalibrated logits, "
            "calibrated once on validation. The heat map is the plain mean of the members' "
            "Grad-CAM maps. The out-of-distribution and population checks read member 1's "
            "features.\n")


def disagreement_text(vote: Vote | None) -> str:
    """"The five models disagree on this image: 2 of 5 say pneumonia." when an ensemble's members
    disagree (:mod:`pneumo.reading.vote`), else ""."""
    if vote is None or not vote.disagree:
        return ""
    verb = "says" if vote.pneumonia == 1 else "say"
    return (f"The {number_word(vote.members)} models disagree on this image: {vote.count} "
            f"{verb} pneumonia.")
