"""Data sets: read a Kaggle-layout folder and carve a patient-grouped validation split.

Layout (the Kaggle download, or the 224 px copies in ../shared): ``ROOT/{train,val,test}/
{NORMAL,PNEUMONIA}/*.jpeg``. Patient ids and pneumonia subtypes come from the file names.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.io.images import SUPPORTED_EXTENSIONS, load_image

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled radiograph."""

    path: Path
    split: str  # train / val / test (after carving: val is the patient-grouped split)
    label: int  # 0 NORMAL, 1 PNEUMONIA
    subtype: str  # "normal", "bacteria" or "virus"
    patient: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def class_name(self) -> str:
        return config.CLASS_NAMES[self.label]


_PATIENT = re.compile(r"^(?:(?:NORMAL2-)?IM-\d+|person\d+)", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """The prefix up to the first number: ``person1946_bacteria_4874.jpeg`` -> ``person1946``;
    ``IM-0115-0001.jpeg`` -> ``IM-0115``; ``IM-0429-0001-0002.jpeg`` -> ``IM-0429``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``. Other names are their own patient."""
    stem = Path(filename).stem
    match = _PATIENT.match(stem)
    return match.group(0) if match else stem


def subtype_of(filename: str, label: int) -> str:
    """Pneumonia subtype from the file name (``bacteria`` / ``virus``); ``normal`` for label 0."""
    if label == 0:
        return "normal"
    lower = filename.lower()
    for subtype in ("bacteria", "virus"):
        if subtype in lower:
            return subtype
    return "unknown"


def read_split(root: Path, split: str) -> list[Sample]:
    """All images of one official split, sorted by class then file name."""
    samples = []
    for label, class_name in enumerate(config.CLASS_NAMES):
        folder = Path(root) / split / class_name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in SUPPORTED_EXTENSIONS and not path.name.startswith("."):
                samples.append(
                    Sample(path, split, label, subtype_of(path.name, label), patient_id(path.name))
                )
    return samples


def layout_problem(root: Path) -> str | None:
    """Why ``root`` is not a Kaggle-layout chest_xray folder, or None when it is."""
    root = Path(root)
    missing = [f"{s}/{c}" for s in ("train", "test") for c in config.CLASS_NAMES
               if not (root / s / c).is_dir()]
    if not missing:
        return None
    return (f"{root} is not in the Kaggle layout: missing {', '.join(missing)}. "
            "Point --data at the chest_xray folder that holds train/ and test/.")


def check_layout(root: Path) -> None:
    """Raise :func:`layout_problem`'s message when ``root`` is not a Kaggle-layout folder."""
    if problem := layout_problem(root):
        raise FileNotFoundError(problem)


def carve_validation(
    train: list[Sample], fraction: float = config.VAL_FRACTION, seed: int = config.SEED
) -> tuple[list[Sample], list[Sample]]:
    """Split official train into (train, val), stratified by class and grouped by patient.

    Patients are shuffled with ``seed`` within their class and taken for validation until
    about ``fraction`` of that class's images are in it. No patient is on both sides.
    """
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in train:
        by_patient[s.patient].append(s)
    rng = random.Random(seed)
    val_patients: set[str] = set()
    for label in range(len(config.CLASS_NAMES)):
        patients = sorted(p for p, ss in by_patient.items()
                          if Counter(x.label for x in ss).most_common(1)[0][0] == label)
        rng.shuffle(patients)
        target = fraction * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for p in patients:
            if taken >= target:
                break
            val_patients.add(p)
            taken += len(by_patient[p])
    new_train = [s for s in train if s.patient not in val_patients]
    new_val = [replace(s, split="val") for s in train if s.patient in val_patients]
    return new_train, new_val


def load_splits(root: Path) -> dict[str, list[Sample]]:
    """train / val (carved from official train) / test; the official 16-image val is unused."""
    check_layout(root)
    train, val = carve_validation(read_split(root, "train"))
    return {"train": train, "val": val, "test": read_split(root, "test")}


def class_counts(samples: list[Sample]) -> dict[str, int]:
    counts = Counter(s.class_name for s in samples)
    return {name: counts.get(name, 0) for name in config.CLASS_NAMES}


def load_arrays(samples: list[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Decode every sample with the app's preprocessing: (N, 224, 224, 3) uint8 and labels."""
    from tqdm import tqdm

    images = np.empty((len(samples), config.IMAGE_SIZE, config.IMAGE_SIZE, 3), dtype="uint8")
    for i, s in enumerate(tqdm(samples, desc="decode", unit="img", disable=not progress)):
        images[i] = load_image(s.path)
    labels = np.array([s.label for s in samples], dtype="float32")
    return images, labels


def fingerprint(samples: list[Sample]) -> str:
    """sha256 over split, class, file name and file content of every sample."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.split, s.label, s.filename)):
        digest.update(f"{s.split}/{s.class_name}/{s.filename}\n".encode())
        digest.update(hashlib.sha256(s.path.read_bytes()).digest())
    return digest.hexdigest()
