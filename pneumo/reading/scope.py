"""Is this image one pneumo may answer about? The DICOM header first, then the pixels.

- :func:`header_verdict`: what a DICOM header states (age, view, laterality, body part,
  modality, :class:`pneumo.io.header.HeaderFacts`) against the intended population
  (``config.SCOPE_*``). A header that states an age decides the age question.
- :class:`ScopeCheck`: the header verdict, else, for an image whose header states no age (PNG,
  JPEG, DICOM without one), the pixel population check (:mod:`pneumo.models.population`).

The "not a chest X-ray" check (:mod:`pneumo.models.ood`) and the image-quality checks stay
where they are; :mod:`pneumo.reading.trust` turns all of them into one state per reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pneumo import config
from pneumo.io.header import DECUBITUS, LATERAL, OBLIQUE, HeaderFacts

LOW_AGE, HIGH_AGE = config.SCOPE_AGE_YEARS
_POPULATION = (f"pneumo was trained and tested on children aged {LOW_AGE:.0f}-{HIGH_AGE - 1:.0f}; "
               "its reading would not be reliable.")

# Reason codes (the CSV's ``reason_code``) and the sentence a clinician reads.
HEADER_AGE = "header_age"
HEADER_VIEW = "header_view"
HEADER_LATERALITY = "header_laterality"
HEADER_BODY_PART = "header_body_part"
HEADER_MODALITY = "header_modality"
LOOKS_OLDER = "looks_older"
REASONS = {
    HEADER_AGE: "The DICOM header gives an age outside the population pneumo was built for. "
                + _POPULATION,
    HEADER_VIEW: "The DICOM header says this is a {view} view. pneumo reads frontal (PA or AP) "
                 "chest films only; its reading would not be reliable.",
    HEADER_LATERALITY: "The DICOM header says this image shows one side only (image laterality "
                       "{side}). pneumo reads frontal chest films of both lungs only.",
    HEADER_BODY_PART: "The DICOM header says this image is of another body part than the chest. "
                      "pneumo reads chest films only.",
    HEADER_MODALITY: "The DICOM header says this image is not a radiograph (CR or DX). pneumo "
                     "reads chest radiographs only.",
    LOOKS_OLDER: "This looks like a chest X-ray of an older child or an adult. " + _POPULATION,
}


@dataclass(frozen=True)
class Verdict:
    """Why an image is outside pneumo's scope: a code and one plain sentence."""

    code: str
    reason: str


def _verdict(code: str, **words) -> Verdict:
    return Verdict(code, REASONS[code].format(**words))


def is_chest(body_part: str) -> bool:
    """True when a BodyPartExamined value names the chest in a spelling of
    ``config.SCOPE_CHEST_WORDS`` (whole value, or one of its words)."""
    words = {body_part.upper()} | set(re.split(r"[^A-Z_]+", body_part.upper()))
    return bool(words & set(config.SCOPE_CHEST_WORDS))


def age_in_scope(age_years: float) -> bool:
    return LOW_AGE <= age_years < HIGH_AGE


def header_verdict(facts: HeaderFacts | None) -> Verdict | None:
    """The first reason the header gives to withhold a reading, or None (in scope, or silent).

    Order: modality, body part, view, laterality, age. Absent fields say nothing. SC and OT
    (a secondary capture or scanned film) pass the modality test: the pixels decide, as for a PNG.
    """
    if facts is None:
        return None
    modality_ok = config.SCOPE_MODALITIES + config.SCOPE_CAPTURE_MODALITIES
    if facts.modality is not None and facts.modality not in modality_ok:
        return _verdict(HEADER_MODALITY)
    if facts.body_part is not None and not is_chest(facts.body_part):
        return _verdict(HEADER_BODY_PART)
    if facts.view in (LATERAL, OBLIQUE, DECUBITUS):
        return _verdict(HEADER_VIEW, view=facts.view)
    if facts.laterality in ("L", "R"):
        return _verdict(HEADER_LATERALITY, side=facts.laterality)
    if facts.age_years is not None and not age_in_scope(facts.age_years):
        return _verdict(HEADER_AGE)
    return None


class ScopeCheck:
    """Header first, then the pixel population check when the header states no age.

    ``population``: a callable giving the "older than the training children" probability for
    pooled features, with a ``threshold`` (:class:`pneumo.models.population.PopulationCheck`), or
    None (then only the header is checked). Call it on a Reading (``header``, ``features``); it
    stores the pixel score on ``reading.older_score`` and returns the :class:`Verdict` or None.
    """

    def __init__(self, population=None):
        self.population = population

    def __call__(self, reading) -> Verdict | None:
        facts = getattr(reading, "header", None)
        found = header_verdict(facts)
        if found is not None:
            return found
        if self.population is None or reading.features is None:
            return None
        score = float(self.population.score(reading.features)[0])
        reading.older_score = score
        if facts is not None and facts.age_years is not None:
            return None  # a stated age decides; the pixels do not overrule it
        return _verdict(LOOKS_OLDER) if score >= self.population.threshold else None
