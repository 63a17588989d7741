"""One trust state per reading, defined once: what every screen, the CSV and the PACS results say.

- ``trusted``: the reading stands (a low-resolution note may ride along);
- ``doubtful``: a real chest X-ray turned, flipped or inverted as uploaded: shown greyed, its
  decision qualified, the corrected reading offered;
- ``out_of_scope``: not a chest X-ray, outside the population (age, view, body part, modality
  from the header; "looks older" from the pixels), or no lung fields found: the reading is
  withheld unless asked for, then shown greyed as outside the validated population;
- ``not_read``: the file could not be read (its error is the reason).

:func:`assess` is a pure function of a reading's checks; the checks themselves run in
:mod:`pneumo.reading.reader`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pneumo import config

TRUSTED, DOUBTFUL, OUT_OF_SCOPE, NOT_READ = "trusted", "doubtful", "out_of_scope", "not_read"
STATES = (TRUSTED, DOUBTFUL, OUT_OF_SCOPE, NOT_READ)
LABELS = {TRUSTED: "Trusted", DOUBTFUL: "Doubtful", OUT_OF_SCOPE: "Out of scope",
          NOT_READ: "Not read"}
NOT_XRAY = "not_xray"
NO_LUNGS = "no_lungs"


@dataclass(frozen=True)
class Trust:
    """A reading's state, the reason code and the sentence a clinician reads ("" when trusted)."""

    state: str
    code: str = ""
    reason: str = ""

    @property
    def trusted(self) -> bool:
        return self.state == TRUSTED

    @property
    def label(self) -> str:
        return LABELS[self.state]


def assess(reading) -> Trust:
    """The :class:`Trust` of a reading, from its error, OOD warning, scope verdict, lung warning
    and quality report, most serious first: not read, then out of scope (not a chest X-ray, the
    header or the pixel population check, no lung fields), then doubtful, else trusted."""
    if reading.error is not None or reading.probability is None:
        return Trust(NOT_READ, "error", reading.error or "The file was not read.")
    if reading.ood_warning:
        return Trust(OUT_OF_SCOPE, NOT_XRAY, reading.ood_warning)
    scope = getattr(reading, "scope", None)
    if scope is not None:
        return Trust(OUT_OF_SCOPE, scope.code, scope.reason)
    lungs = (getattr(reading, "corrected_lung_warning", None)
             if getattr(reading, "judged_on_corrected", False) else reading.lung_warning)
    if config.NO_LUNGS_OUT_OF_SCOPE and lungs:  # a turned film: its corrected copy's lung fields
        return Trust(OUT_OF_SCOPE, NO_LUNGS, lungs)
    if reading.quality is not None and reading.quality.correctable:
        found = [(c, m) for c, m in reading.quality.findings if c != "low_resolution"]
        return Trust(DOUBTFUL, "+".join(c for c, _ in found), " ".join(m for _, m in found))
    return Trust(TRUSTED)
