"""A reading as DICOM objects for the PACS: a Comprehensive SR per read image, and a Secondary
Capture of the Grad-CAM overlay for a trusted reading at or above the threshold.

Both are made with highdicom, in the source image's study (its Study Instance UID), with new
SOP Instance UIDs, in a series of their own kind; only the patient and study modules are copied
from the source (the SR also references the source image as its evidence). Both say that pneumo
is a research tool, not a medical device, and not for diagnosis.

The SR holds the probability, the reading's trust state and its reason (:mod:`pneumo.reading.trust`),
the decision at the department's threshold (:func:`pneumo.reading.reader.decision_of`) and that
threshold, the site calibration in use, the model and its version. The reading sent is the one
shown as the result: for a turned, flipped or inverted film whose corrected copy was read, that
copy's reading, and the SR says what pneumo undid (``corrected``). For an out-of-scope image it
says why and carries neither a decision nor a probability (the app, too, withholds that reading
unless asked). A new SR for an image that already has one lists the one it supersedes in its
Predecessor Documents Sequence (:func:`current_reports`), so a viewer can show the newest and
link the earlier. :func:`read_sr` parses an SR back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from copy import deepcopy
from dataclasses import dataclass

import cv2
import numpy as np

import pneumo
from pneumo import config
from pneumo.reading import trust as trust_states
from pneumo.reading.reader import Reading, decision_of

MANUFACTURER = "pneumo (research software)"
MODEL_NAME = "pneumo pneumonia classifier (EfficientNet-Lite0)"
NOT_FOR_DIAGNOSIS = ("pneumo is a research tool, not a medical device: this result is not for "
                     "diagnosis.")
SR_SERIES_DESCRIPTION = "pneumo - reading - not for diagnosis"
SC_SERIES_DESCRIPTION = "pneumo - heat map - not for diagnosis"
SC_LABEL = "pneumo - heat map - not for diagnosis"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 990, 991
SCHEME = "99PNEUMO"  # the private coding scheme of pneumo's own concepts
SCHEME_NAME = "pneumo local codes"


def _codes():
    from highdicom.sr import CodedConcept

    def own(value: str, meaning: str) -> CodedConcept:
        return CodedConcept(value, SCHEME, meaning)

    return {
        "report": own("PNEUMO-READING", "pneumo research reading"),
        "probability": own("PNEUMO-PROB", "Probability of pneumonia"),
        "threshold": own("PNEUMO-THRESHOLD", "Decision threshold"),
        "decision": own("PNEUMO-DECISION", "pneumo decision"),
        "trust": own("PNEUMO-TRUST", "Trust state"),
        "reason": own("PNEUMO-REASON", "Trust reason"),
        "calibration": own("PNEUMO-CALIB", "Probability calibration"),
        "corrected": own("PNEUMO-CORRECTED", "Read from a corrected copy"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "algorithm": CodedConcept("111001", "DCM", "Algorithm Name"),
        "version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "source": CodedConcept("260753009", "SCT", "Source"),
        "unitless": CodedConcept("1", "UCUM", "no units"),
    }


# Type 2 attributes of the patient and study modules highdicom reads from the source.
_PATIENT_STUDY_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                        "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName")


def _source(header):
    """A copy of the source's header without pixel data, its empty type 2 attributes present."""
    source = deepcopy(header)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in source:
            delattr(source, keyword)
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def _scheme_identification():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "pneumo (research software)"
    return [item]


def sr_content(reading: Reading, threshold: float, source_sop_class_uid: str,
               source_sop_instance_uid: str, calibration: str = ""):
    """The root CONTAINER of a reading's SR (the items :func:`read_sr` reads back)."""
    from highdicom.sr import ContainerContentItem, ImageContentItem, NumContentItem, TextContentItem

    codes = _codes()
    verdict = reading.trust
    items = [
        TextContentItem(codes["comment"], NOT_FOR_DIAGNOSIS, relationship_type="CONTAINS"),
        TextContentItem(codes["algorithm"], MODEL_NAME, relationship_type="CONTAINS"),
        TextContentItem(codes["version"], pneumo.__version__, relationship_type="CONTAINS"),
        TextContentItem(codes["trust"], verdict.state, relationship_type="CONTAINS"),
    ]
    if verdict.reason:
        items.append(TextContentItem(codes["reason"], verdict.reason, relationship_type="CONTAINS"))
    if reading.corrected_from:  # the reading of pneumo's turned or inverted copy, as shown
        from pneumo.models.quality import correction_note

        items.append(TextContentItem(codes["corrected"], correction_note(reading.corrected_from),
                                     relationship_type="CONTAINS"))
    if verdict.state != trust_states.OUT_OF_SCOPE and reading.ok:
        items += [
            NumContentItem(codes["probability"], float(reading.probability), codes["unitless"],
                           relationship_type="CONTAINS"),
            NumContentItem(codes["threshold"], float(threshold), codes["unitless"],
                           relationship_type="CONTAINS"),
            TextContentItem(codes["decision"], decision_of(reading, threshold),
                            relationship_type="CONTAINS"),
            TextContentItem(codes["calibration"],
                            calibration if reading.bundled_probability is not None else "bundled",
                            relationship_type="CONTAINS"),
        ]
    items.append(ImageContentItem(codes["source"], source_sop_class_uid, source_sop_instance_uid,
                                  relationship_type="CONTAINS"))
    root = ContainerContentItem(codes["report"])
    root.ContentSequence = items
    return root


def make_sr(header, reading: Reading, threshold: float, *, series_instance_uid: str,
            instance_number: int = 1, calibration: str = "", previous: Sequence = ()):
    """A highdicom Comprehensive SR of ``reading`` of the image whose header is ``header``.

    ``previous``: the SRs this one supersedes (their data sets), listed as its predecessors."""
    from highdicom import UID
    from highdicom.sr import ComprehensiveSR

    source = _source(header)
    sr = ComprehensiveSR(
        evidence=[source],
        content=sr_content(reading, threshold, source.SOPClassUID, source.SOPInstanceUID,
                           calibration),
        series_instance_uid=series_instance_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,
        previous_versions=list(previous) or None,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.CodingSchemeIdentificationSequence = _scheme_identification()
    return sr


def wants_overlay(reading: Reading, threshold: float) -> bool:
    """A heat-map Secondary Capture is made only for a trusted reading at or above the threshold."""
    return decision_of(reading, threshold) == config.POSITIVE_CLASS


def label_pixels(rgb: np.ndarray, text: str = SC_LABEL) -> np.ndarray:
    """``rgb`` with a black band on top carrying ``text`` in white (burned into the pixels)."""
    height, width = rgb.shape[:2]
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(width / 500))
    (text_w, text_h), base = cv2.getTextSize(text, font, 1.0, thickness)
    scale = 0.92 * width / text_w
    band = int(np.ceil((text_h + base) * scale * 1.6))
    out = np.zeros((height + band, width, 3), np.uint8)
    out[band:] = rgb
    origin = (round(0.04 * width), round(band / 2 + text_h * scale / 2))
    cv2.putText(out, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def overlay_pixels(reading: Reading) -> np.ndarray:
    """The Grad-CAM overlay on the reading's display copy, labelled (RGB uint8)."""
    from pneumo.models.explain import METHODS, overlay

    return label_pixels(overlay(reading.display, reading.cams[METHODS[0]]))


def _orientation(source) -> tuple[str, str]:
    """The source's Patient Orientation when it has two values, else that of a frontal chest
    image as viewed (rows to the patient's left, columns to the feet)."""
    value = [str(v).strip() for v in (source.get("PatientOrientation") or [])]
    return (value[0], value[1]) if len(value) == 2 and all(value) else ("L", "F")


def make_overlay_sc(header, reading: Reading, *, series_instance_uid: str,
                    instance_number: int = 1):
    """A highdicom Secondary Capture of the reading's labelled heat-map overlay."""
    from highdicom.sc import SCImage

    source = _source(header)
    pixels = overlay_pixels(reading)
    try:
        sc = _sc(SCImage, source, pixels, series_instance_uid, instance_number,
                 _orientation(source))
    except ValueError:  # a Patient Orientation highdicom does not accept
        sc = _sc(SCImage, source, pixels, series_instance_uid, instance_number, ("L", "F"))
    return sc


def _sc(SCImage, source, pixels, series_instance_uid, instance_number, orientation):
    from highdicom import UID
    from pydicom.dataset import Dataset

    sc = SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_id=source.PatientID, patient_name=source.PatientName,
        patient_birth_date=source.PatientBirthDate, patient_sex=source.PatientSex,
        accession_number=source.AccessionNumber, study_id=source.StudyID,
        study_date=source.StudyDate, study_time=source.StudyTime,
        referring_physician_name=source.ReferringPhysicianName,
        patient_orientation=orientation, series_description=SC_SERIES_DESCRIPTION,
        specific_character_set=source.get("SpecificCharacterSet"),
    )
    try:
        sc.copy_patient_and_study_information(source)
    except KeyError:  # a source SOP class highdicom does not know: the fields above stand
        pass
    # General Series: the body part shown; with an unpaired one, Laterality (type 2C) is absent.
    sc.BodyPartExamined = "CHEST"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    sc.DerivationDescription = "Grad-CAM heat map of pneumo over the source image"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


@dataclass(frozen=True)
class SrContent:
    """What a pneumo SR says, read back (None where it says nothing)."""

    sop_instance_uid: str
    source_sop_instance_uid: str
    trust_state: str
    reason: str
    probability: float | None
    threshold: float | None
    decision: str | None
    calibration: str | None
    model: str
    version: str
    comment: str
    predecessors: tuple[str, ...]
    corrected: str | None = None  # what pneumo undid before reading, for a corrected copy


def is_pneumo_sr(dataset) -> bool:
    """True for an SR made by :func:`make_sr`."""
    try:
        concept = dataset.ConceptNameCodeSequence[0]
    except (AttributeError, IndexError):
        return False
    own = _codes()["report"]
    return (dataset.get("Modality") == "SR" and concept.CodeValue == own.value
            and concept.CodingSchemeDesignator == own.scheme_designator)


def predecessors_of(dataset) -> tuple[str, ...]:
    """The SOP Instance UIDs an SR lists in its Predecessor Documents Sequence."""
    return tuple(str(instance.ReferencedSOPInstanceUID)
                 for study in dataset.get("PredecessorDocumentsSequence") or []
                 for series in study.get("ReferencedSeriesSequence") or []
                 for instance in series.get("ReferencedSOPSequence") or [])


def read_sr(dataset) -> SrContent:
    """Parse a pneumo SR back with highdicom; ValueError when it is not one."""
    from highdicom.sr import ComprehensiveSR, ImageContentItem, NumContentItem, TextContentItem
    from highdicom.sr.utils import find_content_items

    if not is_pneumo_sr(dataset):
        raise ValueError("not a pneumo SR")
    sr = ComprehensiveSR.from_dataset(dataset)
    codes = _codes()

    def text(key: str) -> str | None:
        found = find_content_items(sr, name=codes[key], value_type="TEXT")
        return TextContentItem.from_dataset(found[0]).value if found else None

    def number(key: str) -> float | None:
        found = find_content_items(sr, name=codes[key], value_type="NUM")
        return float(NumContentItem.from_dataset(found[0]).value) if found else None

    images = find_content_items(sr, name=codes["source"], value_type="IMAGE")
    source = ImageContentItem.from_dataset(images[0]).referenced_sop_instance_uid if images else ""
    return SrContent(
        sop_instance_uid=str(sr.SOPInstanceUID), source_sop_instance_uid=str(source),
        trust_state=text("trust") or "", reason=text("reason") or "",
        probability=number("probability"), threshold=number("threshold"),
        decision=text("decision"), calibration=text("calibration"),
        model=text("algorithm") or "", version=text("version") or "",
        comment=text("comment") or "", predecessors=predecessors_of(dataset),
        corrected=text("corrected"))


def current_reports(reports: Iterable, source_sop_instance_uid: str) -> list:
    """Of pneumo SRs (data sets), those about the source image that no other one supersedes:
    what a new SR of that image lists as its predecessors."""
    mine = [ds for ds in reports if is_pneumo_sr(ds)
            and _source_uid(ds) == source_sop_instance_uid]
    superseded = {uid for ds in mine for uid in predecessors_of(ds)}
    return [ds for ds in mine if str(ds.SOPInstanceUID) not in superseded]


def _source_uid(dataset) -> str:
    for item in dataset.get("ContentSequence") or []:
        if item.get("ValueType") == "IMAGE":
            return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return ""
