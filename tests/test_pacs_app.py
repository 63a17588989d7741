"""The From PACS page (issue #23, item 2 and 3 in the app) in Streamlit's AppTest: listed only with
a PACS configured, for signed-in users only (without sign-in: one message, nothing contacted);
against a real Orthanc: search, a study read into the Read X-rays cards with the probability of
the file read directly, results sent at the department's threshold, and one audit record per
search, study retrieved, reading and store; the PACS's failures as one sentence each."""

from __future__ import annotations

import json
import socket
from datetime import date

import pytest
import streamlit as st
from conftest import ROOT
from pacs_server import PASSWORD, PATIENT_NAME, SHOWN_NAME, USER, Orthanc, load_studies, store_turned_study

from pneumo import audit
from pneumo.app import pacs_ui
from pneumo.io import pacs
from pneumo.reading import dicom_results, wording

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x" * 40, "client_id": "pneumo", "client_secret": "s",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
ROLES = {"claim": "groups", "reader": ["radiology"], "admin": ["pneumo-admins"]}
READER = {"is_logged_in": True, "sub": "r-1", "email": "reader@hospital.org",
          "name": "Rita Reader", "groups": ["radiology"]}
PACS_PAGE, READ_PAGE = "pages/from_pacs.py", "pages/read_xrays.py"


@pytest.fixture(autouse=True)
def _no_pacs_in_the_environment(monkeypatch, tmp_path):
    for name in (pacs.ENV_URL, pacs.ENV_USERNAME, pacs.ENV_PASSWORD, pacs.ENV_TOKEN,
                 pacs.ENV_TIMEOUT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pacs, "SECRETS_FILE", tmp_path / "none.toml")
    monkeypatch.setenv("PNEUMO_AUDIT_URL", f"sqlite:///{tmp_path}/audit.sqlite3")


@pytest.fixture
def listed(monkeypatch) -> list[list[str]]:
    """The titles of the pages each run put in the navigation."""
    runs: list[list[str]] = []
    navigation = st.navigation

    def spy(pages, **kwargs):
        runs.append([p.title for p in pages])
        return navigation(pages, **kwargs)

    monkeypatch.setattr(st, "navigation", spy)
    return runs


@pytest.fixture
def nothing_contacted(monkeypatch) -> list[str]:
    """Every attempt to make a PACS client or an HTTP request (there must be none)."""
    import requests

    tries: list[str] = []

    def client(*args, **kwargs):
        tries.append("PacsClient")
        raise AssertionError("a PACS client was made")

    def send(self, request, **kwargs):
        tries.append(request.url)
        raise AssertionError("an HTTP request was sent")

    monkeypatch.setattr(pacs, "PacsClient", client)
    monkeypatch.setattr(requests.Session, "send", send)
    return tries


def _app(user: dict | None = READER, auth: dict | None = AUTH, pacs_section: dict | None = None,
         page: str | None = PACS_PAGE):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    if page is not None:
        at.switch_page(page)
    if auth is not None:
        at.secrets["auth"] = auth
        at.secrets["pneumo"] = {"roles": ROLES}
    if pacs_section is not None:
        at.secrets["pacs"] = pacs_section
    if user is not None:
        at.user = user
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("title", "markdown", "caption", "error", "info",
                                               "warning", "success")
                     for e in getattr(at, kind))


def test_two_studies_of_a_patient_on_one_day_get_different_names():
    """Two same-day studies of one patient were both "patient · date · image 1" on their cards
    and worklist rows; the accession number (else the study time and the end of the study's UID)
    tells them apart."""
    day = {"study_date": "20261210", "patient_name": PATIENT_NAME, "patient_id": "PID-X"}
    first = pacs.Study("1.2.826.0.1.3680043.8.498.101", accession_number="ACC-1",
                       study_time="101500", **day)
    second = pacs.Study("1.2.826.0.1.3680043.8.498.202", accession_number="ACC-2",
                        study_time="101500", **day)
    no_accession = [pacs.Study(f"1.2.826.0.1.3680043.8.498.30{i}", study_time="141000.25", **day)
                    for i in (1, 2)]
    untimed = pacs.Study("1.2.826.0.1.3680043.8.498.404", **day)
    studies = [first, second, *no_accession, untimed]
    labels = [pacs_ui.image_label(s, n) for s in studies for n in (1, 2)]
    assert len(set(labels)) == len(labels)
    assert pacs_ui.image_label(first, 1) == f"{SHOWN_NAME} \u00b7 2026-12-10 \u00b7 ACC-1 \u00b7 image 1"
    assert pacs_ui.image_label(no_accession[0], 2) == (
        f"{SHOWN_NAME} \u00b7 2026-12-10 \u00b7 14:10 study \u2026.498.301 \u00b7 image 2")
    assert pacs_ui.image_label(untimed, 1).endswith("\u00b7 study \u2026.498.404 \u00b7 image 1")


# --- without a PACS server -------------------------------------------------------------------

def test_without_a_pacs_there_is_no_page(listed, nothing_contacted):
    at = _app(page=None)
    assert listed and "From PACS" not in listed[-1] and "Read X-rays" in listed[-1]
    direct = _app()  # the page's address opened directly: the home page, not the PACS page
    assert "From PACS" not in [t.value for t in direct.title]
    assert not nothing_contacted and at.file_uploader


def test_a_pacs_without_sign_in_says_sign_in_is_required_and_contacts_nothing(
        listed, nothing_contacted):
    at = _app(user=None, auth=None, pacs_section={"url": "http://127.0.0.1:9/dicom-web"})
    assert "From PACS" in listed[-1]
    assert [t.value for t in at.title] == ["From PACS"]
    (warning,) = at.warning
    assert warning.value == pacs_ui.SIGN_IN_REQUIRED
    assert "[auth]" in warning.value and "Sign-in and audit" in warning.value
    assert not at.button and not at.text_input and not at.date_input and not at.error
    assert nothing_contacted == []


def test_a_signed_in_reader_gets_the_page_listed(listed, nothing_contacted):
    at = _app(pacs_section={"url": "http://127.0.0.1:9/dicom-web"})
    assert listed[-1][:2] == ["Read X-rays", "From PACS"]
    assert f"At most **{pacs_ui.config.PACS_MAX_IMAGES} images**" in _texts(at)
    assert at.button(key="pacs_search") and nothing_contacted == []  # nothing until a search


def test_a_wrong_pacs_setting_is_one_sentence(nothing_contacted):
    at = _app(pacs_section={"url": "ftp://pacs/dicom-web"})
    (error,) = at.error
    assert "must be an http:// or https:// URL" in error.value and not nothing_contacted


def _search(at, since=date(2026, 12, 1), until=date(2026, 12, 31), patient="", accession=""):
    at.date_input(key="pacs_dates").set_value((since, until))
    at.text_input(key="pacs_patient_id").set_value(patient)
    at.text_input(key="pacs_accession").set_value(accession)
    at.button(key="pacs_search").click().run()
    assert not at.exception, at.exception
    return at


def test_a_server_that_is_down_or_silent_is_one_sentence():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    at = _search(_app(pacs_section={"url": f"http://127.0.0.1:{closed}/dicom-web"}))
    (error,) = at.error
    assert error.value == (f"The PACS at http://127.0.0.1:{closed} could not be reached while "
                           "searching for studies: the server is down or the address is wrong.")
    with socket.socket() as listener:  # accepts connections and says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        at = _search(_app(pacs_section={"url": f"http://127.0.0.1:{port}/dicom-web",
                                        "timeout": 0.5}))
    (error,) = at.error
    assert "did not answer within 0.5 s while searching for studies" in error.value
    assert not at.dataframe


# --- against Orthanc -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc-app"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loaded(orthanc, shared_data):
    return load_studies(orthanc.client(), shared_data)


def _orthanc_secrets(orthanc, password: str = PASSWORD) -> dict:
    return {"url": orthanc.url, "username": USER, "password": password, "timeout": 20}


def test_wrong_credentials_are_one_sentence(orthanc):
    at = _search(_app(pacs_section=_orthanc_secrets(orthanc, "wrong")))
    (error,) = at.error
    assert error.value == (f"The PACS at http://127.0.0.1:{orthanc.port} refused pneumo's "
                           "credentials (HTTP 401) while searching for studies: check the user "
                           "name and password, or the token.")


def _direct(data: bytes):
    """The file read directly, as the Read page reads an upload."""
    from pneumo.cli import loaders
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer
    from pneumo.reading.reader import read_batch

    (reading,) = read_batch([("f.dcm", data)], load_explainer(), ood_check=ood.load_detector(),
                            segmenter=loaders.load_segmenter(),
                            quality_checker=loaders.load_quality_checker(),
                            scope_check=loaders.load_scope_check())
    return reading


def test_search_read_a_study_and_send_its_results(orthanc, loaded, bundled_model_dir, tmp_path):
    from pneumo.app import ui

    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    store = audit.AuditStore(url)  # the department's threshold, which results are sent at
    store.change_setting(audit.Actor(subject="a-1"), audit.DEFAULT_THRESHOLD_KEY,
                         {"threshold": 0.321, "calibration": None}, audit.DEFAULT_THRESHOLD)
    at = _search(_app(pacs_section=_orthanc_secrets(orthanc)))
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    uids = loaded["studies"]
    by_accession = {row["Accession"]: row for row in table.to_dict("records")}
    assert set(by_accession) == {"ACC-A", "ACC-B", "ACC-C", "ACC-E"}
    b = by_accession["ACC-B"]
    assert (b["Patient"], b["Patient ID"], b["Birth date"], b["Age"], b["Study date"],
            b["Frontal images"]) == (SHOWN_NAME, "PID-B", "2023-12-01", "3 y", "2026-12-10", 2)
    assert by_accession["ACC-E"]["Frontal images"] == 0
    assert "without a frontal chest image" in _texts(at)
    assert list(table["Study date"]) == sorted(table["Study date"], reverse=True)

    at.session_state["threshold"] = 0.9  # the reader's own slider: not what is sent
    at.multiselect(key="pacs_chosen").set_value([uids["B"]]).run()
    at.button(key="pacs_read").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "Read 2 images from 1 study" in _texts(at)

    labels = [f"{SHOWN_NAME} \u00b7 2026-12-10 \u00b7 ACC-B \u00b7 image {n}" for n in (1, 2)]
    files = {uid: loaded["frontal"][uid] for uid in loaded["by_study"]["B"]}
    direct = {uid: _direct(data) for uid, data in files.items()}
    read = at.session_state[ui.READINGS_KEY]
    from_pacs = at.session_state[ui.PACS_KEY]
    assert sorted(p.label for p in from_pacs.values()) == labels
    for digest, image in from_pacs.items():
        expected = direct[image.ref.sop_instance_uid]
        assert abs(read[digest].probability - expected.probability) <= 1e-6
        assert read[digest].trust == expected.trust

    at.switch_page(READ_PAGE).run()
    assert not at.exception, at.exception
    titles = [s.value for s in at.subheader]
    assert all(label in titles for label in labels)
    shown = [m.value for m in at.metric if m.label == "Probability of pneumonia"]
    assert sorted(shown) == sorted(wording.probability_text(r.probability)
                                   for r in direct.values())
    assert "2 readings of images from the PACS" in _texts(at)
    worklist = at.dataframe[0].value
    assert sorted(worklist["file"]) == labels  # named by patient and study, not a file

    at.switch_page(PACS_PAGE).run()
    assert "at **0.321**" in _texts(at) and "not your slider's 0.900" in _texts(at)
    at.button(key="pacs_send").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "Stored 2 reports (DICOM SR)" in _texts(at)

    client = orthanc.client()
    reports = [client.retrieve_dataset(r) for r in client.instances(uids["B"], modality="SR")]
    assert len(reports) == 2
    for sr in reports:
        back = dicom_results.read_sr(sr)
        expected = direct[back.source_sop_instance_uid]
        assert back.threshold == 0.321 and abs(back.probability - expected.probability) <= 1e-6
    overlays = client.instances(uids["B"], modality="OT")
    assert len(overlays) == sum(dicom_results.wants_overlay(r, 0.321) for r in direct.values())

    records = store.records()
    by_action: dict[str, list] = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(record)
    (search,) = by_action[audit.PACS_SEARCH]
    assert json.loads(search["new_value"]) == {"since": "2026-12-01", "until": "2026-12-31",
                                               "patient_id": "", "accession": "",
                                               "studies_found": 4}
    (retrieved,) = by_action[audit.PACS_RETRIEVE]
    assert json.loads(retrieved["new_value"]) == {"study_instance_uid": uids["B"]}
    assert len(by_action[audit.READING]) == 2
    stored = [u for r in by_action[audit.PACS_SEND] for u in json.loads(r["new_value"])[
        "sop_instance_uids"]]
    assert len(by_action[audit.PACS_SEND]) == 2 and len(stored) == 2 + len(overlays)
    assert {r["subject"] for r in records if r["action"] != audit.DEFAULT_THRESHOLD} == {"r-1"}
    assert PATIENT_NAME not in repr(records)


def test_a_search_by_patient_and_accession_is_recorded_with_them(orthanc, loaded, tmp_path):
    at = _app(pacs_section=_orthanc_secrets(orthanc))
    at.checkbox(key="pacs_any_date").check()
    at = _search(at, accession="ACC-C")
    table = at.dataframe[0].value
    assert list(table["Accession"]) == ["ACC-C"]
    (record,) = audit.AuditStore(f"sqlite:///{tmp_path}/audit.sqlite3").records(
        action=audit.PACS_SEARCH)
    assert json.loads(record["new_value"]) == {"since": "", "until": "", "patient_id": "",
                                               "accession": "ACC-C", "studies_found": 1}


def test_a_turned_film_read_corrected_is_sent_as_corrected(orthanc, loaded, shared_data,
                                                           bundled_model_dir):
    """Send results to PACS sends the reading the worklist gives: once the corrected copy of a
    film stored turned is read, its reading (and the SR says what pneumo undid), not the
    doubtful reading of the film as found."""
    from pneumo.reading.reader import read_corrected

    study, data = store_turned_study(orthanc.client(), shared_data)
    as_found = _direct(data)
    (corrected,) = read_corrected([as_found], *_corrected_models())
    assert as_found.trust.state == "doubtful" and corrected.trust.state == "trusted"
    at = _app(pacs_section=_orthanc_secrets(orthanc))
    at.checkbox(key="pacs_any_date").check()
    at = _search(at, accession="ACC-F")
    at.checkbox(key="pacs_all").check().run()
    at.button(key="pacs_read").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    at.switch_page(READ_PAGE).run()
    (fix,) = [b for b in at.button if str(b.key).startswith("correct-")]
    fix.click().run()
    assert not at.exception, at.exception
    at.switch_page(PACS_PAGE).run()
    (sent,) = [t for t in (d.value for d in at.dataframe) if "Trust" in t.columns]
    assert list(sent["Trust"]) == ["Trusted"]  # the corrected copy's, as the worklist says
    at.button(key="pacs_send").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    client = orthanc.client()
    (sr,) = [client.retrieve_dataset(r) for r in client.instances(study, modality="SR")]
    back = dicom_results.read_sr(sr)
    assert abs(back.probability - corrected.probability) <= 1e-6
    assert back.trust_state == "trusted" and "turned 180 degrees" in back.corrected


def _corrected_models() -> tuple:
    from pneumo.cli import loaders
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer

    return (load_explainer(), ood.load_detector(), loaders.load_segmenter(), 16,
            loaders.load_scope_check())
