"""A study read from Orthanc in Chromium (issue #23, item 5): the app with [auth] (oidc-provider-
mock) and [pacs] (Orthanc with DICOMweb) on free loopback ports; a reader signs in, searches by
accession number on the From PACS page, reads the study, finds its card on Read X-rays named by
patient and study date with the probability of the file read directly, and sends the results
back (an SR found again in the study)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from pacs_server import PASSWORD, PATIENT_NAME, USER, Orthanc, load_studies
from test_pacs_app import _direct
from test_signin_browser import CHROMIUM, CHROMIUM_FLAGS, USERS, _free_port, _sign_in, _wait_http

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
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock not installed "
                                                     "(requirements-dev.txt)")
    loaded = load_studies(orthanc.client(), shared_data)
    work = tmp_path_factory.mktemp("pacs-browser")
    idp_port, app_port = _free_port(), _free_port()
    idp_cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port",
               str(idp_port)]
    for user in USERS:
        idp_cmd += ["--user-claims", json.dumps(user)]
    idp_log = work / "idp.log"
    procs = [subprocess.Popen(idp_cmd, stdout=idp_log.open("w"), stderr=subprocess.STDOUT)]
    idp_url = f"http://127.0.0.1:{idp_port}"
    try:
        _wait_http(f"{idp_url}/.well-known/openid-configuration", procs[0], idp_log)
        app_url = f"http://127.0.0.1:{app_port}"
        secrets = work / "secrets.toml"
        secrets.write_text(
            "[auth]\n"
            f'redirect_uri = "{app_url}/oauth2callback"\n'
            f'cookie_secret = "{os.urandom(24).hex()}"\n'
            'client_id = "pneumo"\nclient_secret = "pneumo-secret"\n'
            f'server_metadata_url = "{idp_url}/.well-known/openid-configuration"\n'
            "[pacs]\n"
            f'url = "{orthanc.url}"\nusername = "{USER}"\npassword = "{PASSWORD}"\n')
        audit_url = f"sqlite:///{work}/audit.sqlite3"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PNEUMO_PACS_")}
        env.update({"PNEUMO_AUDIT_URL": audit_url, "PYTHONPATH": str(ROOT)})
        app_log = work / "server.log"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
             "--server.port", str(app_port), "--server.address", "127.0.0.1",
             "--secrets.files", str(secrets)],
            cwd=ROOT, env=env, stdout=app_log.open("w"), stderr=subprocess.STDOUT))
        _wait_http(f"{app_url}/_stcore/health", procs[1], app_log)
        yield {"url": app_url, "audit": audit_url, "log": app_log, "loaded": loaded}
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_reader_reads_a_study_from_orthanc_and_sends_its_results(app, orthanc):
    from playwright.sync_api import sync_playwright

    loaded = app["loaded"]
    (uid,) = loaded["by_study"]["A"]
    expected = _direct(loaded["frontal"][uid])
    label = f"{PATIENT_NAME} \u00b7 2026-12-03 \u00b7 ACC-A \u00b7 image 1"
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
