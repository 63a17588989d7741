"""An Orthanc with the DICOMweb plugin for the tests, and DICOM studies made from shared test
films (tests/test_pacs.py, tests/test_pacs_app.py).

Orthanc runs on free loopback ports with a temporary storage and index folder, loaded with DICOM
files made in memory from a few shared test images (pixels wrapped with pydicom; nothing copied
into the repository). tools/run_tests.sh installs orthanc, orthanc-dicomweb and dicom3tools as
root; where they are missing the Orthanc tests skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.io import pacs

USER, PASSWORD = "pneumo-test", "s3cret-pw"
PATIENT_NAME = "Zyxtest^Pacsname"
SHOWN_NAME = "Zyxtest, Pacsname"  # PATIENT_NAME as the PACS page shows it
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def source_dataset(pixels: np.ndarray, patient: str, study: str, series: str, *,
                   view: str = "PA", age: str = "003Y", study_date: str = "20261203"):
    """A CR image of the chest wrapping ``pixels`` (uint8 grey), with patient and study tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = PATIENT_NAME, f"PID-{patient}"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "20231201", "F", age
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "101500", f"ACC-{patient}"
    ds.StudyID, ds.ReferringPhysicianName = "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CR", 1, 1
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", view, ["L", "F"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    return ds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin() -> str | None:
    try:
        files = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True,
                               timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):  # not a Debian system
        files = []
    found = [f for f in files if f.endswith(".so") and "DicomWeb" in f and Path(f).exists()]
    found += [str(p) for p in sorted(Path("/usr/share/orthanc/plugins").glob("*DicomWeb*.so"))]
    return found[0] if found else None


class Orthanc:
    """An Orthanc with the DICOMweb plugin on free loopback ports, its files under ``root``."""

    def __init__(self, root: Path):
        binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
        plugin = _plugin()
        if binary is None or plugin is None:
            pytest.skip("Orthanc and its DICOMweb plugin are not installed (apt-get install "
                        "orthanc orthanc-dicomweb; tools/run_tests.sh does it as root)")
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        dicom_port = _free_port()
        while dicom_port == self.port:
            dicom_port = _free_port()
        settings = {
            "Name": "pneumo-test", "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"), "HttpPort": self.port,
            "DicomPort": dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpCompressionEnabled": False,
        }
        config = root / "orthanc.json"
        config.write_text(json.dumps(settings))
        self.log = (root / "orthanc.log").open("w")
        self.process = subprocess.Popen([binary, str(config)], stdout=self.log,
                                        stderr=subprocess.STDOUT, cwd=root)
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        self._wait()

    def _wait(self, seconds: float = 60) -> None:
        import requests

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.process.returncode}")
            try:
                if requests.get(f"{self.url}/studies", auth=(USER, PASSWORD), timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail("Orthanc did not answer within a minute")

    def settings(self, password: str = PASSWORD, timeout: float = 20) -> pacs.PacsSettings:
        return pacs.PacsSettings(self.url, USER, password, timeout=timeout)

    def client(self, password: str = PASSWORD) -> pacs.PacsClient:
        return pacs.PacsClient(self.settings(password))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def pixels_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def load_studies(client: pacs.PacsClient, shared_data: Path) -> dict:
    """Studies stored in Orthanc: A (a PA and a lateral), B (PA and AP), C (PA, an adult: out of
    scope), D (before the date range), E (a lateral only). Returns the studies' UIDs and the
    bytes of each frontal image as a file."""
    from pydicom.uid import generate_uid

    normal = sorted((shared_data / "test" / "NORMAL").glob("*.jpeg"))
    pneumonia = sorted((shared_data / "test" / "PNEUMONIA").glob("*.jpeg"))
    plan = {  # study: [(image, view, age)], date
        "A": ([(normal[0], "PA", "003Y"), (normal[1], "LL", "003Y")], "20261203"),
        "B": ([(pneumonia[0], "PA", "004Y"), (pneumonia[1], "AP", "004Y")], "20261210"),
        "C": ([(pneumonia[2], "PA", "035Y")], "20261215"),
        "D": ([(normal[2], "PA", "003Y")], "20261101"),
        "E": ([(normal[3], "LL", "003Y")], "20261204"),
    }
    studies, frontal, by_study = {}, {}, {}
    for key, (images, study_date) in plan.items():
        studies[key] = generate_uid()
        datasets = [source_dataset(pixels_of(path), key, studies[key], generate_uid(), view=view,
                                   age=age, study_date=study_date)
                    for path, view, age in images]
        client.store(datasets, studies[key])
        by_study[key] = [str(ds.SOPInstanceUID) for ds in datasets if ds.ViewPosition != "LL"]
        frontal.update({str(ds.SOPInstanceUID): pacs.as_file_bytes(ds)
                        for ds in datasets if ds.ViewPosition != "LL"})
    return {"studies": studies, "frontal": frontal, "by_study": by_study}


def store_turned_study(client: pacs.PacsClient, shared_data: Path) -> tuple[str, bytes]:
    """Study F, dated before the other studies' search range (accession ACC-F): one PA film of a
    normal child stored turned 180 degrees, which the quality check finds turned and whose
    corrected copy reads differently. Returns its Study Instance UID and its bytes as a file."""
    from pydicom.uid import generate_uid

    normal = sorted((shared_data / "test" / "NORMAL").glob("*.jpeg"))
    turned = np.ascontiguousarray(np.rot90(pixels_of(normal[1]), 2))
    ds = source_dataset(turned, "F", generate_uid(), generate_uid(), study_date="20261020")
    client.store([ds], str(ds.StudyInstanceUID))
    return str(ds.StudyInstanceUID), pacs.as_file_bytes(ds)
