"""The PACS source and results back, against a real Orthanc with its DICOMweb plugin.

Orthanc runs on free loopback ports with a temporary storage and index folder, loaded with DICOM
files made in memory from a few shared test images (pixels wrapped with pydicom; nothing copied
into the repository). tools/run_tests.sh installs orthanc, orthanc-dicomweb and dicom3tools as
root; where they are missing the Orthanc tests skip with the reason. The settings and the SR of an
out-of-scope reading are checked without Orthanc.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pacs_server import (
    PASSWORD,
    PATIENT_NAME,
    USER,
    Orthanc,
    load_studies,
    source_dataset,
    store_turned_study,
)

from pneumo.io import pacs
from pneumo.reading import dicom_results

# -- settings (no server) ---------------------------------------------------------------------

def test_the_pacs_is_off_unless_configured(tmp_path, monkeypatch):
    assert pacs.load_settings(environ={}, secrets_file=tmp_path / "none.toml") is None
    monkeypatch.setattr(pacs, "SECRETS_FILE", tmp_path / "none.toml")
    for name in (pacs.ENV_URL, pacs.ENV_USERNAME, pacs.ENV_PASSWORD, pacs.ENV_TOKEN):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(pacs.PacsNotConfigured, match="No PACS is configured: give its DICOMweb"):
        pacs.connect()


def test_settings_from_secrets_and_environment(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[pacs]\nurl = "https://pacs.example.org/dicom-web/"\n'
                       'username = "reader"\npassword = "pw-in-file"\ntimeout = 7\n')
    s = pacs.load_settings(environ={}, secrets_file=secrets)
    assert (s.url, s.username, s.password, s.timeout) == (
        "https://pacs.example.org/dicom-web", "reader", "pw-in-file", 7.0)
    assert "pw-in-file" not in repr(s) and s.server == "https://pacs.example.org"
    s = pacs.load_settings(environ={pacs.ENV_URL: "http://other:8042/dicom-web",
                                    pacs.ENV_TOKEN: "tok"}, secrets_file=secrets)
    assert s.url == "http://other:8042/dicom-web" and s.token == "tok"
    client = pacs.PacsClient(s)
    assert client._client._session.headers["Authorization"] == "Bearer tok"
    assert pacs.load_settings("http://x/dicom-web", {}, secrets).url == "http://x/dicom-web"


@pytest.mark.parametrize("env, message", [
    ({pacs.ENV_URL: "ftp://pacs/dicom-web"}, "must be an http:// or https:// URL"),
    ({pacs.ENV_URL: "http://pacs/dicom-web", pacs.ENV_USERNAME: "u"}, "without a password"),
    ({pacs.ENV_URL: "http://pacs/dicom-web", pacs.ENV_TIMEOUT: "soon"}, "timeout must be"),
])
def test_unusable_settings_are_one_sentence(tmp_path, env, message):
    with pytest.raises(pacs.PacsNotConfigured, match=message):
        pacs.load_settings(environ=env, secrets_file=tmp_path / "none.toml")


def test_the_batch_command_without_a_pacs_contacts_nothing(tmp_path, monkeypatch, capsys):
    from pneumo.cli import pacs as cli

    monkeypatch.setattr(pacs, "SECRETS_FILE", tmp_path / "none.toml")
    monkeypatch.delenv(pacs.ENV_URL, raising=False)
    assert cli.main(["--since", "2026-12-01", "--out", str(tmp_path / "r.csv")]) == 1
    assert "No PACS is configured" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("name, shown", [
    ("DOE^JANE^^^", "DOE, JANE"),
    ("DOE^JANE^MARY", "DOE, JANE MARY"),
    ("DOE^JOHN^A^DR^JR", "DOE, DR JOHN A JR"),
    ("DOE^^^^", "DOE"),
    ("^JANE", "JANE"),
    ("^^^^", ""),
    ("Jane Doe", "Jane Doe"),  # no caret: as it is
    ("", ""),
])
def test_a_person_name_is_shown_without_its_carets(name, shown):
    assert pacs.readable_name(name) == shown


# -- DICOM results (no server) ----------------------------------------------------------------

def dciodvfy_errors(dataset, folder: Path) -> list[str]:
    """dciodvfy's error lines for ``dataset`` (warnings allowed), or skip without dciodvfy."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    path.write_bytes(pacs.as_file_bytes(dataset))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_an_out_of_scope_sr_says_why_and_carries_no_decision(tmp_path):
    from highdicom import UID

    from pneumo.io.header import HeaderFacts
    from pneumo.reading.reader import Reading
    from pneumo.reading.scope import header_verdict

    header = pacs.header_of(pacs.as_file_bytes(source_dataset(
        np.full((64, 64), 90, np.uint8), "X", str(UID()), str(UID()), age="035Y")))
    reading = Reading(name="x", digest="", probability=0.9,
                      scope=header_verdict(HeaderFacts(age_years=35.0)))
    sr = dicom_results.make_sr(header, reading, 0.5, series_instance_uid=str(UID()))
    back = dicom_results.read_sr(pacs.as_file_dataset(sr))
    assert back.trust_state == "out_of_scope" and back.reason == reading.trust.reason
    assert back.decision is None and back.probability is None and back.threshold is None
    assert "not a medical device" in back.comment and "not for diagnosis" in back.comment
    assert back.source_sop_instance_uid == header.SOPInstanceUID
    assert not dicom_results.wants_overlay(reading, 0.5)
    assert dciodvfy_errors(sr, tmp_path) == []


def test_the_one_part_of_an_instance_answer_is_taken_as_sent():
    part = b"\x00" * 128 + b"DICM" + b"--not-the-boundary\r\n\r\n" + bytes(range(256)) * 4
    head = b'--b0undary\r\nContent-Type: application/dicom\r\n'
    tail = b"\r\n--b0undary--\r\n"
    kind = 'multipart/related; type="application/dicom"; boundary="b0undary"'
    with_length = head + f"Content-Length: {len(part)}\r\n\r\n".encode() + part + tail
    assert pacs.single_part(with_length, kind) == part
    assert pacs.single_part(head + b"\r\n" + part + tail, kind) == part  # no Content-Length
    assert pacs.single_part(part, "application/dicom") == part  # a server that sends it bare
    with pytest.raises(ValueError):
        pacs.single_part(head + b"\r\n" + part + b"\r\n--b0undary\r\n\r\nmore" + tail, kind)
    with pytest.raises(ValueError):
        pacs.single_part(b"{}", "application/json")
    with pytest.raises(ValueError):  # cut short
        pacs.single_part(head + f"Content-Length: {len(part)}\r\n\r\n".encode() + part[:99], kind)


# -- Orthanc ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loaded(orthanc, shared_data):
    """Studies stored in Orthanc (:func:`pacs_server.load_studies`)."""
    return load_studies(orthanc.client(), shared_data)


@pytest.fixture(scope="module")
def models(bundled_model_dir):
    from pneumo.cli import loaders
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer

    return {"explainer": load_explainer(), "ood_check": ood.load_detector(),
            "segmenter": loaders.load_segmenter(), "quality_checker": loaders.load_quality_checker(),
            "scope_check": loaders.load_scope_check()}


def read(files, models):
    from pneumo.reading.reader import read_batch

    return {r.name: r for r in read_batch(files, **models)}


@pytest.fixture(scope="module")
def direct(loaded, models):
    """The frontal images read from their own bytes, as an upload is."""
    return read(list(loaded["frontal"].items()), models)


def test_search_by_dates_patient_and_accession(loaded, orthanc):
    client, uids = orthanc.client(), loaded["studies"]
    from datetime import date

    def found(**kw):
        return {s.study_instance_uid for s in client.search_studies(**kw)}

    assert found(since=date(2026, 12, 1)) == {uids[k] for k in "ABCE"}
    assert found(since=date(2026, 12, 1), until=date(2026, 12, 5)) == {uids["A"], uids["E"]}
    assert found(patient_id="PID-B") == {uids["B"]}
    assert found(accession_number="ACC-C") == {uids["C"]}
    assert found(since=date(2027, 1, 1)) == set()
    study = next(s for s in client.search_studies(patient_id="PID-B"))
    assert study.patient_name == PATIENT_NAME and PATIENT_NAME not in repr(study)


def test_frontal_images_only_and_a_study_without_any(loaded, orthanc):
    client, uids = orthanc.client(), loaded["studies"]
    assert [r.sop_instance_uid for r in client.frontal_images(uids["A"])] == loaded["by_study"]["A"]
    assert sorted(r.view_position for r in client.frontal_images(uids["B"])) == ["AP", "PA"]
    with pytest.raises(pacs.PacsNoImages, match="holds no frontal chest image"):
        client.frontal_images(uids["E"])


def test_retrieved_images_read_exactly_as_the_files(loaded, orthanc, models, direct):
    client = orthanc.client()
    files = []
    for key in "ABC":
        for ref in client.frontal_images(loaded["studies"][key]):
            data = client.retrieve(ref)
            assert data[128:132] == b"DICM"
            files.append((ref.sop_instance_uid, data))
    retrieved = read(files, models)
    assert set(retrieved) == {uid for k in "ABC" for uid in loaded["by_study"][k]}
    for uid, reading in retrieved.items():
        assert reading.ok and abs(reading.probability - direct[uid].probability) <= 1e-6
        assert reading.trust == direct[uid].trust


def test_many_instances_are_retrieved_at_once_in_order_and_a_missing_one_is_its_error(
        loaded, orthanc, models, direct):
    from pneumo.reading.pacs_reading import read_instances

    client = orthanc.client()
    refs = [r for k in "ABC" for r in client.frontal_images(loaded["studies"][k])]
    gone = pacs.InstanceRef(refs[0].study_instance_uid, refs[0].series_instance_uid,
                            "1.2.826.0.1.3680043.8.498.999999")
    wanted = refs[:2] + [gone] + refs[2:]
    got = list(client.retrieve_all(wanted, workers=3))
    assert isinstance(got[2], pacs.PacsRefused) and "HTTP 404" in str(got[2])
    assert [g for i, g in enumerate(got) if i != 2] == [
        loaded["frontal"][r.sop_instance_uid] for r in refs]  # the files as stored
    chunks = list(read_instances(client, wanted, batch_size=2, **models))
    assert [len(c) for c in chunks] == [2, 2, 1]
    read = [p for c in chunks for p in c]
    assert [p.ref for p in read] == wanted
    assert read[2].header is None and read[2].reading.error == str(got[2])
    for p in read[:2] + read[3:]:
        assert str(p.header.SOPInstanceUID) == p.ref.sop_instance_uid and "PixelData" not in p.header
        expected = direct[p.ref.sop_instance_uid]
        assert abs(p.reading.probability - expected.probability) <= 1e-6
        assert p.reading.trust == expected.trust


def test_a_missing_image_is_said_to_be_missing_not_a_wrong_address(loaded, orthanc):
    """An HTTP 404 for an image asked for by its UID says the PACS does not have that image;
    only a 404 on a search (nothing named) points at the address."""
    client = orthanc.client()
    study = loaded["studies"]["A"]
    (real,) = client.frontal_images(study)
    gone = pacs.InstanceRef(study, real.series_instance_uid, "1.2.826.0.1.3680043.8.498.999999")
    for retrieve in (client.retrieve, client.retrieve_dataset):
        with pytest.raises(pacs.PacsNotFound) as err:
            retrieve(gone)
        assert str(err.value) == (
            f"The PACS at http://127.0.0.1:{orthanc.port} does not have image "
            f"1.2.826.0.1.3680043.8.498.999999 of study {study} (HTTP 404 while retrieving an "
            "image): it may have been deleted or moved; the connection and the credentials are "
            "fine.")
    (item,) = client.retrieve_all([gone])
    assert isinstance(item, pacs.PacsNotFound) and isinstance(item, pacs.PacsRefused)
    wrong = pacs.PacsClient(pacs.PacsSettings(orthanc.url.replace("/dicom-web", "/no-such-path"),
                                              username=USER, password=PASSWORD))
    with pytest.raises(pacs.PacsRefused, match="check that the address is its DICOMweb") as err:
        wrong.search_studies()
    assert not isinstance(err.value, pacs.PacsNotFound)


def _run_cli(orthanc, tmp_path: Path, *args: str) -> tuple[int, list[dict], str]:
    """The batch command in this process: its exit code, CSV rows, and everything it printed
    or logged (root at DEBUG)."""
    from pneumo.cli import pacs as cli

    out, printed, logged = tmp_path / "results.csv", io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logged)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed), \
                contextlib.redirect_stderr(printed):
            mp.setenv(pacs.ENV_USERNAME, USER)
            mp.setenv(pacs.ENV_PASSWORD, PASSWORD)
            mp.delenv(pacs.ENV_TOKEN, raising=False)
            mp.setattr(pacs, "SECRETS_FILE", tmp_path / "none.toml")
            mp.setenv("PNEUMO_AUDIT_URL", f"sqlite:///{tmp_path / 'audit.sqlite3'}")  # its own
            code = cli.main(["--url", orthanc.url, "--out", str(out), *args])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return code, rows, printed.getvalue() + logged.getvalue() + out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sent(loaded, orthanc, bundled_model_dir, tmp_path_factory):
    start = time.perf_counter()
    result = _run_cli(orthanc, tmp_path_factory.mktemp("send"), "--since", "2026-12-01", "--send")
    return (*result, time.perf_counter() - start)


def test_batch_command_reads_every_frontal_image_and_names_no_patient(sent, loaded, direct):
    from pneumo.cli import pacs as cli

    code, rows, text, _ = sent
    assert code == 0, text
    frontal = [uid for k in "ABC" for uid in loaded["by_study"][k]]
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(frontal)
    assert list(rows[0]) == list(cli.COLUMNS) and "file" not in rows[0]
    for r in rows:
        assert abs(float(r["probability_pneumonia"]) - direct[r["sop_instance_uid"]].probability) \
            <= 1e-6
    for secret in (PATIENT_NAME, "Zyxtest", "PID-", "ACC-"):
        assert secret not in text
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    (adult,) = loaded["by_study"]["C"]
    assert by_uid[adult]["trust"] == "out_of_scope" and by_uid[adult]["decision"] == "OUT OF SCOPE"
    assert {r["sent"] for r in rows} <= {"SR", "SR+SC"}


def test_the_batch_command_leaves_an_audit_trail(sent, loaded, tmp_path_factory):
    """Issue #24: the search with its filters, each study retrieved, each reading and each result
    stored are one record each, by the operating-system user; no patient name, no file name."""
    from pneumo import audit

    code, rows, text, _ = sent
    assert code == 0, text
    db = next(tmp_path_factory.getbasetemp().glob("send*/audit.sqlite3"))
    records = audit.AuditStore(f"sqlite:///{db}").records()
    by_action: dict[str, list] = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(record)
    (search,) = by_action[audit.PACS_SEARCH]
    assert json.loads(search["new_value"])["since"] == "2026-12-01"
    studies = {loaded["studies"][k] for k in "ABC"}
    assert {json.loads(r["new_value"])["study_instance_uid"]
            for r in by_action[audit.PACS_RETRIEVE]} == studies
    assert len(by_action[audit.PACS_RETRIEVE]) == len(studies)  # once each
    assert len(by_action[audit.READING]) == len(rows)
    stored = [uid for r in by_action[audit.PACS_SEND] for uid in json.loads(r["new_value"])[
        "sop_instance_uids"]]
    assert len(stored) == sum(2 if r["sent"] == "SR+SC" else 1 for r in rows)
    assert all(r["subject"].startswith("os:") for r in records)
    assert PATIENT_NAME.encode() not in db.read_bytes()


def test_a_study_whose_images_were_not_retrieved_is_not_recorded_as_retrieved(
        loaded, orthanc, bundled_model_dir, tmp_path, monkeypatch):
    """The study's retrieval is recorded after its images came, never before: a study the PACS
    sent nothing of has no PACS_RETRIEVE record (its rows say why)."""
    from pneumo import audit

    def ghosts(self, study_instance_uid):
        return [pacs.InstanceRef(study_instance_uid, "1.2.826.0.1.3680043.8.498.998",
                                 f"1.2.826.0.1.3680043.8.498.998.{i}") for i in (1, 2)]

    monkeypatch.setattr(pacs.PacsClient, "frontal_images", ghosts)
    code, rows, text = _run_cli(orthanc, tmp_path, "--accession", "ACC-B")
    assert code == 0, text
    assert len(rows) == 2 and all(r["error"] for r in rows)
    actions = [r["action"] for r in audit.AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
               .records()]
    assert audit.PACS_SEARCH in actions and audit.PACS_RETRIEVE not in actions


def _results(client: pacs.PacsClient, study: str, modality: str) -> list:
    return [client.retrieve_dataset(r) for r in client.instances(study, modality=modality)]


def test_sr_and_heat_maps_are_stored_found_and_read_back(sent, loaded, orthanc, direct, tmp_path):
    from pneumo.evaluation import artifacts

    _, rows, _, _ = sent
    client, threshold = orthanc.client(), artifacts.recommended_threshold()
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for key in "ABC":
        study = loaded["studies"][key]
        reports = _results(client, study, "SR")
        assert len(reports) == len(loaded["by_study"][key])
        for sr in reports:
            back = dicom_results.read_sr(sr)
            reading = direct[back.source_sop_instance_uid]
            assert str(sr.StudyInstanceUID) == study and sr.PatientName == PATIENT_NAME
            assert sr.SOPInstanceUID not in loaded["frontal"]
            assert sr.SeriesDescription == dicom_results.SR_SERIES_DESCRIPTION
            assert "ViewPosition" not in sr and "BodyPartExamined" not in sr
            assert back.trust_state == reading.trust.state
            assert "not for diagnosis" in back.comment and back.predecessors == ()
            if reading.trust.state == "out_of_scope":
                assert back.decision is None and back.probability is None and back.reason
            else:
                assert abs(back.probability - reading.probability) <= 1e-6
                assert back.threshold == threshold
                assert back.decision == by_uid[back.source_sop_instance_uid]["decision"]
            assert dciodvfy_errors(sr, tmp_path) == []
        overlays = _results(client, study, "OT")
        expected = [u for u in loaded["by_study"][key]
                    if dicom_results.wants_overlay(direct[u], threshold)]
        assert len(overlays) == len(expected)
        for sc in overlays:
            assert sc.SeriesDescription == dicom_results.SC_SERIES_DESCRIPTION
            assert str(sc.StudyInstanceUID) == study and sc.BurnedInAnnotation == "YES"
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in expected
            assert "ViewPosition" not in sc
            assert sc.pixel_array[:10].max() == 255  # the label's white text in the top band
            assert dciodvfy_errors(sc, tmp_path) == []
        series = {str(ds.SeriesInstanceUID) for ds in reports} | {
            str(ds.SeriesInstanceUID) for ds in overlays}
        assert len(series) == (2 if overlays else 1)
    assert any(r["sent"] == "SR+SC" for r in rows), "no trusted reading above the threshold"


def test_sending_again_supersedes_the_earlier_report(sent, loaded, orthanc, tmp_path):
    client, study = orthanc.client(), loaded["studies"]["B"]
    before = {str(ds.SOPInstanceUID) for ds in _results(client, study, "SR")}
    code, rows, text = _run_cli(orthanc, tmp_path, "--accession", "ACC-B", "--send")
    assert code == 0, text
    after = _results(client, study, "SR")
    new = [ds for ds in after if str(ds.SOPInstanceUID) not in before]
    assert len(new) == len(loaded["by_study"]["B"])
    for ds in new:
        back = dicom_results.read_sr(ds)
        (previous,) = back.predecessors
        assert previous in before
        old = next(d for d in after if str(d.SOPInstanceUID) == previous)
        assert dicom_results.read_sr(old).source_sop_instance_uid == back.source_sop_instance_uid
    for uid in loaded["by_study"]["B"]:
        (current,) = dicom_results.current_reports(after, uid)
        assert current in new


def test_a_turned_film_sends_the_reading_its_row_gives(loaded, orthanc, models, shared_data,
                                                       tmp_path):
    """The SR sent carries the reading the CSV row gives as the result: a film stored turned is
    read as found (doubtful, judged on its corrected copy), or with --auto-correct from pneumo's
    corrected copy, and then the SR says what was undone."""
    from pneumo.reading.reader import read_batch, read_corrected

    study, data = store_turned_study(orthanc.client(), shared_data)
    (as_found,) = read_batch([("f.dcm", data)], **models)
    (corrected,) = read_corrected([as_found], models["explainer"], ood_check=models["ood_check"],
                                  segmenter=models["segmenter"], scope_check=models["scope_check"])
    assert as_found.trust.state == "doubtful" and as_found.judged_on_corrected
    assert corrected.trust.state == "trusted" and corrected.corrected_from == ("rot180",)
    assert abs(as_found.probability - corrected.probability) > 0.01  # rows are compared within 1e-6
    client = orthanc.client()
    for flags, expected in (((), as_found), (("--auto-correct",), corrected)):
        folder = tmp_path / (flags[0].strip("-") if flags else "as-found")
        folder.mkdir()
        code, rows, text = _run_cli(orthanc, folder, "--accession", "ACC-F", "--send", *flags)
        assert code == 0, text
        (row,) = rows
        assert abs(float(row["probability_pneumonia"]) - expected.probability) <= 1e-6
        assert row["trust"] == expected.trust.state
        assert row["corrected"] == ("rot180" if flags else "")
        (sr,) = dicom_results.current_reports(_results(client, study, "SR"), row["sop_instance_uid"])
        back = dicom_results.read_sr(sr)
        assert abs(back.probability - expected.probability) <= 1e-6
        assert (back.trust_state, back.decision) == (row["trust"], row["decision"])
        if flags:
            assert back.corrected == "Corrected by pneumo, not the image as uploaded: turned " \
                                     "180 degrees before reading."
            assert dciodvfy_errors(sr, tmp_path) == []
        else:
            assert back.corrected is None


def test_wrong_password_is_one_sentence(loaded, orthanc):
    with pytest.raises(pacs.PacsAuthError) as err:
        orthanc.client(password="wrong").search_studies()
    assert str(err.value) == (f"The PACS at http://127.0.0.1:{orthanc.port} refused pneumo's "
                              "credentials (HTTP 401) while searching for studies: check the "
                              "user name and password, or the token.")


def test_a_stopped_server_is_one_sentence(tmp_path):
    server = Orthanc(tmp_path / "stopped")
    client = server.client()
    assert client.search_studies() == []
    server.stop()
    with pytest.raises(pacs.PacsUnreachable) as err:
        client.search_studies()
    assert str(err.value) == (f"The PACS at http://127.0.0.1:{server.port} could not be reached "
                              "while searching for studies: the server is down or the address "
                              "is wrong.")


@contextlib.contextmanager
def _silent_server_client(timeout: float = 0.5):
    """A client of a loopback server that accepts connections (the kernel does) and says nothing."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        yield pacs.PacsClient(pacs.PacsSettings(f"http://127.0.0.1:{port}/dicom-web",
                                                timeout=timeout))


def test_a_server_that_never_answers_times_out():
    with _silent_server_client() as client:
        start = time.perf_counter()
        with pytest.raises(pacs.PacsTimeout, match="did not answer within 0.5 s"):
            client.search_studies()
        assert time.perf_counter() - start < 5


def test_retrievals_not_started_are_dropped_when_the_caller_stops():
    """A page that stops at the first failure (the server gone silent) does not wait for every
    retrieval queued behind it, each until its timeout."""
    with _silent_server_client() as client:
        refs = [pacs.InstanceRef("1.2.3", "1.2.3.4", f"1.2.3.4.{i}") for i in range(12)]
        start = time.perf_counter()
        items = client.retrieve_all(refs, workers=2, ahead=10)
        assert isinstance(next(items), pacs.PacsTimeout)
        items.close()
        assert time.perf_counter() - start < 1.8  # 10 queued would take 2.5 s more
