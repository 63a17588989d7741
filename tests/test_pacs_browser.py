"""A study read from Orthanc in Chromium (issue #23, item 5): the app with [auth] (oidc-provider-
mock) and [pacs] (Orthanc with DICOMweb) on free loopback ports; a reader signs in, searches by
accession number on the From PACS page, reads the study, finds its card on Read X-rays named by
patient and study date with the probability of the file read directly, and sends the results
back (an SR found again in the study)."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT
from pacs_server import PASSWORD, PATIENT_NAME, SHOWN_NAME, USER, Orthanc, load_studies
from test_pacs_app import _direct
from test_signin_browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    _sign_in,
    app_behind_sign_in,
    skip_without_browser_or_idp,
)

from pneumo import audit
from pneumo.reading import dicom_results, wording

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("bundled_model_dir")]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc-browser"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(tmp_path_factory, orthanc, shared_data):
    skip_without_browser_or_idp()
    loaded = load_studies(orthanc.client(), shared_data)
    pacs = f'[pacs]\nurl = "{orthanc.url}"\nusername = "{USER}"\npassword = "{PASSWORD}"\n'
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMO_PACS_")}
    with app_behind_sign_in(tmp_path_factory.mktemp("pacs-browser"), pacs, environ) as server:
        yield {**server, "loaded": loaded}


def test_a_reader_reads_a_study_from_orthanc_and_sends_its_results(app, orthanc):
    from playwright.sync_api import sync_playwright

    loaded = app["loaded"]
    (uid,) = loaded["by_study"]["A"]
    expected = _direct(loaded["frontal"][uid])
    label = f"{SHOWN_NAME} \u00b7 2026-12-03 \u00b7 ACC-A \u00b7 image 1"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            _sign_in(page, app["url"], "reader1")
            nav = page.locator('[data-testid="stSidebarNav"]')
            nav.get_by_text("From PACS").click(timeout=60_000)
            page.get_by_text("Any date (with a patient ID or accession number)").click(
                timeout=60_000)
            accession = page.get_by_role("textbox", name="Accession number")
            accession.fill("ACC-A")
            accession.press("Enter")
            page.get_by_role("button", name="Search").click()
            page.get_by_text("1 study found").wait_for(timeout=60_000)
            page.get_by_text("All 1 study with frontal images").click()
            page.get_by_role("button", name="Read selected (1 image)").click(timeout=60_000)
            page.get_by_text("Read 1 image from 1 study").wait_for(timeout=180_000)

            nav.get_by_text("Read X-rays").click()
            page.get_by_role("heading", name=label).wait_for(timeout=120_000)
            shown = page.locator('[data-testid="stMetricValue"]').first.inner_text()
            assert shown == wording.probability_text(expected.probability)

            nav.get_by_text("From PACS").click()
            page.get_by_role("button", name="Send results to PACS (1 image)").click(
                timeout=60_000)
            page.get_by_text("Stored 1 report (DICOM SR)").wait_for(timeout=120_000)
            page.screenshot(path=str(ROOT / "test-artifacts" / "from_pacs.png"), full_page=True)
        finally:
            browser.close()
    client = orthanc.client()
    (sr,) = [client.retrieve_dataset(r)
             for r in client.instances(loaded["studies"]["A"], modality="SR")]
    back = dicom_results.read_sr(sr)
    assert back.source_sop_instance_uid == uid
    assert abs(back.probability - expected.probability) <= 1e-6
    actions = [r["action"] for r in audit.AuditStore(app["audit"]).records()]
    assert sorted(actions) == sorted([audit.PACS_SEARCH, audit.PACS_RETRIEVE, audit.READING,
                                      audit.PACS_SEND])
    log = app["log"].read_text()
    assert PATIENT_NAME not in log and "PID-A" not in log and "ACC-A" not in log
