"""What a DICOM header says about the patient and the view: the facts the scope check needs.

Only these attributes are read (:data:`HEADER_TAGS`), and only the facts below are kept:
the age in years (from ``PatientAge``, else ``PatientBirthDate`` and the first of
``StudyDate`` / ``AcquisitionDate`` / ``ContentDate``), the view (``ViewPosition``, else the
meaning of ``ViewCodeSequence``), ``ImageLaterality``, ``BodyPartExamined`` and ``Modality``.
The birth date and the study dates are used for the age and then dropped; nothing here is
shown, logged or written anywhere. Pure functions over a pydicom data set (or anything with
``get``), so a test can build the cases with plain pydicom.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

HEADER_TAGS = [
    "PatientAge", "PatientBirthDate", "StudyDate", "AcquisitionDate", "ContentDate",
    "ViewPosition", "ViewCodeSequence", "ImageLaterality", "BodyPartExamined", "Modality",
]

FRONTAL, LATERAL, OBLIQUE, DECUBITUS = "frontal", "lateral", "oblique", "decubitus"
# ViewPosition defined terms (PS3.3 C.8.11.5) -> view.
_VIEW_POSITIONS = {"PA": FRONTAL, "AP": FRONTAL, "LL": LATERAL, "RL": LATERAL, "LAT": LATERAL,
                   "LATERAL": LATERAL, "RLO": OBLIQUE, "LLO": OBLIQUE, "RLD": DECUBITUS,
                   "LLD": DECUBITUS}
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@dataclass(frozen=True)
class HeaderFacts:
    """The header's statements about scope; None where the header says nothing usable."""

    age_years: float | None = None
    view: str | None = None  # FRONTAL, LATERAL, OBLIQUE, DECUBITUS
    laterality: str | None = None  # ImageLaterality: "L", "R", "B", "U"
    body_part: str | None = None  # BodyPartExamined, upper case, stripped
    modality: str | None = None  # Modality, upper case, stripped

    @property
    def silent(self) -> bool:
        """True when the header states none of these facts."""
        return all(v is None for v in (self.age_years, self.view, self.laterality,
                                       self.body_part, self.modality))


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip().upper()
    return text or None


def parse_age_string(value) -> float | None:
    """A DICOM AS value ("004Y", "018M", "010W", "120D") in years, or None if malformed."""
    text = _text(value)
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", text or "")
    return int(match.group(1)) * _AGE_UNITS[match.group(2)] if match else None


def parse_date(value) -> date | None:
    """A DICOM DA value ("YYYYMMDD", or "YYYY.MM.DD" as some old files have) or None."""
    digits = re.sub(r"\D", "", str(value or ""))
    if len(digits) != 8:
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def age_from_dates(birth, *when) -> float | None:
    """Years between the birth date and the first usable of ``when``; None if either is missing
    or the result is negative or beyond 150 years."""
    born = parse_date(birth)
    on = next((d for d in (parse_date(w) for w in when) if d is not None), None)
    if born is None or on is None:
        return None
    years = (on - born).days / 365.25
    return years if 0 <= years <= 150 else None


def view_of(ds) -> str | None:
    """The view from ``ViewPosition``, else from ``ViewCodeSequence``'s code meaning."""
    position = _text(ds.get("ViewPosition"))
    if position in _VIEW_POSITIONS:
        return _VIEW_POSITIONS[position]
    try:
        items = list(ds.get("ViewCodeSequence") or [])
    except TypeError:
        items = []
    for item in items:
        meaning = (_text(item.get("CodeMeaning")) if hasattr(item, "get") else None) or ""
        for word, view in (("LATERAL", LATERAL), ("OBLIQUE", OBLIQUE), ("DECUBITUS", DECUBITUS),
                           ("POSTERO-ANTERIOR", FRONTAL), ("ANTERO-POSTERIOR", FRONTAL),
                           ("POSTEROANTERIOR", FRONTAL), ("ANTEROPOSTERIOR", FRONTAL)):
            if word in meaning:
                return view
    return None


def header_facts(ds) -> HeaderFacts:
    """The :class:`HeaderFacts` of a data set read with at least :data:`HEADER_TAGS`."""
    age = parse_age_string(ds.get("PatientAge"))
    if age is None:
        age = age_from_dates(ds.get("PatientBirthDate"), ds.get("StudyDate"),
                             ds.get("AcquisitionDate"), ds.get("ContentDate"))
    return HeaderFacts(age_years=age, view=view_of(ds), laterality=_text(ds.get("ImageLaterality")),
                       body_part=_text(ds.get("BodyPartExamined")), modality=_text(ds.get("Modality")))
