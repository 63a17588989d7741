"""Data sets: patient ids, the patient-grouped validation split, the Kaggle layout."""

from pathlib import Path

import numpy as np
import pytest

from pneumo import config
from pneumo.data.splits import (
    Sample,
    carve_validation,
    load_arrays,
    load_splits,
    patient_id,
    read_split,
    subtype_of,
)
from pneumo.io.images import load_image


@pytest.mark.parametrize("name, patient", [
    ("person1946_bacteria_4874.jpeg", "person1946"),
    ("person1_virus_6.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"),  # a second image of the same child
    ("IM-0429-0001.jpeg", "IM-0429"),
    ("NORMAL2-IM-0130-0001-0002.jpeg", "NORMAL2-IM-0130"),
    ("scan.png", "scan"),
])
def test_patient_id(name, patient):
    assert patient_id(name) == patient


def test_no_patient_straddles_the_carved_split(shared_data):
    """Every image of a child (several-image names included) is on one side only."""
    train, val = carve_validation(read_split(shared_data, "train"))
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    multi = [s for s in train + val if s.filename.count("-") >= 3 and s.filename.startswith("IM-")]
    assert multi, "the official train split has several-image names such as IM-0429-0001-0002"


def test_subtype():
    assert subtype_of("person1_virus_6.jpeg", 1) == "virus"
    assert subtype_of("person1946_bacteria_4874.jpeg", 1) == "bacteria"
    assert subtype_of("IM-0115-0001.jpeg", 0) == "normal"


def _samples(n_patients: int, label: int, per_patient: int) -> list[Sample]:
    prefix = "IM-" if label == 0 else "person"
    return [Sample(Path(f"{prefix}{p}-{i}.jpeg"), "train", label, "normal" if label == 0 else "virus",
                   f"{prefix}{p}")
            for p in range(n_patients) for i in range(per_patient)]


def test_carved_validation_is_grouped_and_stratified():
    train = _samples(200, 0, 1) + _samples(300, 1, 3)
    new_train, val = carve_validation(train, fraction=0.15, seed=3)
    assert not {s.patient for s in new_train} & {s.patient for s in val}
    assert len(new_train) + len(val) == len(train)
    for label, total in ((0, 200), (1, 900)):
        share = sum(s.label == label for s in val) / total
        assert 0.14 <= share <= 0.17
    assert all(s.split == "val" for s in val)
    # deterministic for a seed, different for another
    assert carve_validation(train, 0.15, 3)[1] == val
    assert carve_validation(train, 0.15, 4)[1] != val


def test_shared_split_has_no_patient_on_both_sides(shared_data):
    splits = load_splits(shared_data)
    train_patients = {s.patient for s in splits["train"]}
    val_patients = {s.patient for s in splits["val"]}
    assert train_patients and val_patients
    assert not train_patients & val_patients
    assert len(splits["test"]) == 624
    assert len(splits["train"]) + len(splits["val"]) == 5216


def test_reads_full_resolution_kaggle_layout(kaggle_folder):
    test = read_split(kaggle_folder, "test")
    assert len(test) == 12
    assert {s.class_name for s in test} == {"NORMAL", "PNEUMONIA"}
    images, labels = load_arrays(test, progress=False)
    assert images.shape == (12, config.IMAGE_SIZE, config.IMAGE_SIZE, 3)
    assert images.dtype == np.uint8
    assert labels.tolist() == [0.0] * 6 + [1.0] * 6


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Kaggle layout"):
        load_splits(tmp_path)


def test_training_arrays_and_app_path_give_the_same_array(kaggle_folder):
    """The arrays training and validation start from (decode of a path) equal the app's (bytes)."""
    samples = read_split(kaggle_folder, "train")
    images, _ = load_arrays(samples, progress=False)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(images[i], load_image(s.path.read_bytes()))
