"""Results back to the PACS: the batch command's and the app's one way of storing readings.

:class:`Sender` stores, per read image, a DICOM SR in the image's study and, for a trusted reading
at or above the threshold, a Secondary Capture of its heat map (:mod:`pneumo.reading.dicom_results`);
one SR series and one SC series per study for each sender (a run of the batch command, a click in
the app). An SR for an image that already has one of pneumo's in the PACS supersedes it (its
Predecessor Documents Sequence lists the earlier one), never a silent duplicate. Who records what
was stored is the caller's (``record``: the audit trail sits above this layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pneumo.io import pacs
from pneumo.reading.reader import Reading

SR, SR_SC = "SR", "SR+SC"  # what :meth:`Sender.send` stored


@dataclass
class Sender:
    """Stores results back, one SR series and one SC series per study for this sender.

    ``record(new)``: called after each store with ``{"study_instance_uid", "sop_instance_uids"}``
    (the audit trail's PACS_SEND record)."""

    client: pacs.PacsClient
    threshold: float
    calibration: str = ""
    series: dict[tuple[str, str], str] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    reports: dict[str, list] = field(default_factory=dict)  # study -> pneumo SRs already there
    record: Callable[[dict], None] | None = None

    def _series(self, study: str, kind: str) -> tuple[str, int]:
        from highdicom import UID

        uid = self.series.setdefault((study, kind), str(UID()))
        self.numbers[uid] = self.numbers.get(uid, 0) + 1
        return uid, self.numbers[uid]

    def _previous(self, study: str, source_uid: str) -> list:
        from pneumo.reading import dicom_results

        if study not in self.reports:
            refs = [r for r in self.client.instances(study, modality="SR")
                    if r.series_description in ("", dicom_results.SR_SERIES_DESCRIPTION)]
            self.reports[study] = [ds for ds in (self.client.retrieve_dataset(r) for r in refs)
                                   if dicom_results.is_pneumo_sr(ds)]
        return dicom_results.current_reports(self.reports[study], source_uid)

    def send(self, header, reading: Reading) -> str:
        """Store the reading's SR (and heat map); returns what was stored (:data:`SR` or
        :data:`SR_SC`). Raises :class:`pneumo.io.pacs.PacsError`."""
        from pneumo.reading import dicom_results

        study = str(header.StudyInstanceUID)
        previous = self._previous(study, str(header.SOPInstanceUID))
        uid, number = self._series(study, "SR")
        objects = [dicom_results.make_sr(header, reading, self.threshold, series_instance_uid=uid,
                                         instance_number=number, calibration=self.calibration,
                                         previous=previous)]
        if dicom_results.wants_overlay(reading, self.threshold):
            uid, number = self._series(study, "SC")
            objects.append(dicom_results.make_overlay_sc(header, reading, series_instance_uid=uid,
                                                         instance_number=number))
        self.client.store(objects, study_instance_uid=study)
        self.reports[study].append(objects[0])  # a second send by this sender supersedes it
        if self.record is not None:
            self.record({"study_instance_uid": study,
                         "sop_instance_uids": [str(o.SOPInstanceUID) for o in objects]})
        return SR_SC if len(objects) == 2 else SR
