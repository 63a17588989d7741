"""Radiographs of patients older than pneumo's population (NIH ChestX-ray14): for the check that
tells them apart from the training children, never for training the classifier.

Reads either layout:
- the shared sample (``../shared/data/nih_cxr14_sample``): ``MANIFEST.csv`` with ``file, age,
  patient`` (and ``label``, ``view``), files relative to the folder;
- a full ChestX-ray14 download: ``Data_Entry_2017*.csv`` (``Image Index``, ``Patient Age``,
  ``Patient ID``, ``View Position``) with the PNGs anywhere below the folder (``images_001/...``).
Only frontal (PA/AP) rows are used.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pneumo import config

SHARED_OLDER_DIR = config.PROJECT_ROOT.parent / "shared" / "data" / "nih_cxr14_sample"
AGE_BANDS = (("7-9", 7, 10), ("10-17", 10, 18), ("18+", 18, 200))


@dataclass(frozen=True)
class OlderSample:
    path: Path
    age: int
    patient: str
    label: str = ""  # the data set's own finding label (noisy; never used to fit anything)

    @property
    def band(self) -> str:
        return age_band(self.age)


def age_band(age: float) -> str:
    for name, low, high in AGE_BANDS:
        if low <= age < high:
            return name
    return "under 7"


def layout_problem(root: Path) -> str | None:
    """None when ``root`` holds either layout, else what is wrong (a usage message)."""
    root = Path(root)
    if (root / "MANIFEST.csv").is_file() or any(root.glob("Data_Entry_2017*.csv")):
        return None
    return (f"{root} is not a ChestX-ray14 folder: expected MANIFEST.csv (the shared sample) or "
            "Data_Entry_2017*.csv beside the images (a full download).")


def read_older(root: Path) -> list[OlderSample]:
    """Every frontal radiograph of either layout, in file order."""
    root = Path(root)
    manifest = root / "MANIFEST.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            return [OlderSample(root / row["file"], int(row["age"]), str(row["patient"]),
                                row.get("label", "")) for row in csv.DictReader(f)
                    if row.get("view", "PA") in ("PA", "AP")]
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise FileNotFoundError(layout_problem(root))
    found = {p.name: p for p in root.rglob("*.png")}
    out = []
    with entries[0].open(newline="") as f:
        for row in csv.DictReader(f):
            path = found.get(row["Image Index"])
            if path is not None and row.get("View Position", "PA") in ("PA", "AP"):
                out.append(OlderSample(path, int(row["Patient Age"]), str(row["Patient ID"]),
                                       row.get("Finding Labels", "")))
    return out
