"""The lung-mask data set: radiograph/mask pairs, which may be fitted on and which only measured.

Layout (``../shared/data/lung_masks`` or a copy at any resolution): ``MANIFEST.csv`` with one
row per pair, ``images/<id>.png`` and ``masks/<id>.png`` (lung = bright). Only
``kermany_train_*`` pairs and ``ccxr_*`` pairs under CC BY may be fitted on;
``kermany_test_*`` are masks of the classifier's official test images, for measuring only.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pneumo import config
from pneumo.data.splits import patient_id
from pneumo.io.images import load_image

FITTING_LICENCES = ("CC BY 3.0", "CC BY 4.0")


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a boolean mask (area-weighted, then at half) to (height, width)."""
    m = np.asarray(mask, dtype="float32")
    if m.shape == (height, width):
        return m >= 0.5
    interpolation = cv2.INTER_AREA if m.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(m, (width, height), interpolation=interpolation) >= 0.5


@dataclass(frozen=True)
class LungPair:
    """One radiograph with its lung mask."""

    id: str
    image_path: Path
    mask_path: Path
    group: str  # kermany_train, kermany_test or ccxr
    licence: str
    source_name: str  # file name of the original (the Kaggle name for kermany_*)

    @property
    def may_fit(self) -> bool:
        """True when the pair may be used to fit (train or select) anything."""
        if self.group == "kermany_train":
            return True
        return self.group == "ccxr" and self.licence.strip() in FITTING_LICENCES

    @property
    def patient(self) -> str:
        return patient_id(self.source_name) if self.group.startswith("kermany") else self.id


def layout_problem(root: Path) -> str | None:
    """Why ``root`` is not a lung_masks folder, or None when it has its manifest."""
    if (Path(root) / "MANIFEST.csv").exists():
        return None
    return f"{root} has no MANIFEST.csv: point --data at the lung_masks folder."


def read_pairs(root: Path) -> list[LungPair]:
    """Every pair listed in ``root/MANIFEST.csv`` whose two files exist, in manifest order."""
    root = Path(root)
    if problem := layout_problem(root):
        raise FileNotFoundError(problem)
    manifest = root / "MANIFEST.csv"
    pairs = []
    with manifest.open(newline="") as f:
        for row in csv.DictReader(f):
            pid = row["id"]
            image, mask = _find(root / "images", pid), _find(root / "masks", pid)
            if image is None or mask is None:
                continue
            group = "ccxr" if pid.startswith("ccxr_") else "_".join(pid.split("_")[:2])
            pairs.append(LungPair(pid, image, mask, group, row.get("licence", ""),
                                  Path(row.get("orig_path", pid)).name))
    return pairs


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return None


def split_for_fitting(pairs: list[LungPair], fraction: float = config.LUNG_VAL_FRACTION,
                      seed: int = config.SEED) -> tuple[list[LungPair], list[LungPair]]:
    """Fitting pairs -> (train, val), grouped by patient; measurement-only pairs are left out."""
    fit = [p for p in pairs if p.may_fit]
    patients = sorted({p.patient for p in fit})
    random.Random(seed).shuffle(patients)
    val_patients = set(patients[: round(fraction * len(patients))])
    return ([p for p in fit if p.patient not in val_patients],
            [p for p in fit if p.patient in val_patients])


def read_mask(path: Path, height: int = config.IMAGE_SIZE, width: int = config.IMAGE_SIZE) -> np.ndarray:
    """A mask file -> bool (height, width); any size and bit depth (lung = above half range)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot read mask {path}")
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    m = (raw.astype("float32") > np.iinfo(raw.dtype).max / 2 if raw.dtype.kind == "u" else raw > 0.5)
    return resize_mask(m, height, width)


def load_pairs(pairs: list[LungPair], size: int = config.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images through the classifier's preprocessing (N, 224, 224, 3) uint8 and masks (N, 224, 224) bool."""
    images = np.empty((len(pairs), size, size, 3), "uint8")
    masks = np.empty((len(pairs), size, size), bool)
    for i, p in enumerate(pairs):
        images[i] = load_image(p.image_path)
        masks[i] = read_mask(p.mask_path, size, size)
    return images, masks


def masks_by_filename(root: Path, group: str = "kermany_test") -> dict[str, Path]:
    """Kaggle file name -> mask path for one group (the test masks are for measuring only)."""
    return {p.source_name: p.mask_path for p in read_pairs(root) if p.group == group}


def fingerprint(pairs: list[LungPair]) -> str:
    """sha256 over ids and the bytes of every image and mask."""
    digest = hashlib.sha256()
    for p in sorted(pairs, key=lambda p: p.id):
        digest.update(p.id.encode())
        digest.update(hashlib.sha256(p.image_path.read_bytes()).digest())
        digest.update(hashlib.sha256(p.mask_path.read_bytes()).digest())
    return digest.hexdigest()
