"""Sign-in end to end (issue #24): the app with an [auth] section pointing at oidc-provider-mock
(a real OpenID Connect provider made for tests) on a free loopback port, driven in Debian's
Chromium: every page asks for sign-in first, a reader signs in, reads one film (exactly one audit
record, no file name), signs out (the film's media URL is gone); an administrator gets the Audit
page; a user with neither role gets "No access"."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, png_bytes, synthetic_xray

from pneumo import audit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
USERS = [
    {"sub": "reader1", "email": "rita@hospital.org", "name": "Rita Reader", "roles": ["pneumo-reader"]},
    {"sub": "admin1", "email": "adam@hospital.org", "name": "Adam Admin", "roles": ["pneumo-admin"]},
    {"sub": "visitor1", "email": "vic@hospital.org", "name": "Vic Visitor", "roles": ["cardiology"]},
]

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("bundled_model_dir")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def app_behind_sign_in(work: Path, extra_secrets: str = "", environ: dict | None = None):
    """The app with ``[auth]`` against oidc-provider-mock (:data:`USERS`), both on free loopback
    ports, its audit trail in ``work``; yields its url, audit database and log. ``extra_secrets``:
    more of secrets.toml (e.g. a ``[pacs]`` section); ``environ``: the app's environment
    (default this process's)."""
    idp_port, app_port = _free_port(), _free_port()
    idp_cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port",
               str(idp_port)]
    for user in USERS:
        idp_cmd += ["--user-claims", json.dumps(user)]
    idp_log = work / "idp.log"
    idp = subprocess.Popen(idp_cmd, stdout=idp_log.open("w"), stderr=subprocess.STDOUT)
    idp_url = f"http://127.0.0.1:{idp_port}"
    procs = [idp]
    try:
        _wait_http(f"{idp_url}/.well-known/openid-configuration", idp, idp_log)
        app_url = f"http://127.0.0.1:{app_port}"
        secrets = work / "secrets.toml"
        secrets.write_text(
            "[auth]\n"
            f'redirect_uri = "{app_url}/oauth2callback"\n'
            f'cookie_secret = "{os.urandom(24).hex()}"\n'
            'client_id = "pneumo"\nclient_secret = "pneumo-secret"\n'
            f'server_metadata_url = "{idp_url}/.well-known/openid-configuration"\n'
            + extra_secrets)
        audit_url = f"sqlite:///{work}/audit.sqlite3"
        env = {**(os.environ if environ is None else environ), "PNEUMO_AUDIT_URL": audit_url,
               "PYTHONPATH": str(ROOT)}
        app_log = work / "server.log"
        app = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
             "--server.port", str(app_port), "--server.address", "127.0.0.1",
             "--secrets.files", str(secrets)],
            cwd=ROOT, env=env, stdout=app_log.open("w"), stderr=subprocess.STDOUT)
        procs.append(app)
        _wait_http(f"{app_url}/_stcore/health", app, app_log)
        yield {"url": app_url, "audit": audit_url, "log": app_log}
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def skip_without_browser_or_idp() -> None:
    """Skip, with the reason, where Chromium, playwright or oidc-provider-mock is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock not installed "
                                                     "(requirements-dev.txt)")


@pytest.fixture(scope="module")
def signin_server(tmp_path_factory):
    skip_without_browser_or_idp()
    with app_behind_sign_in(tmp_path_factory.mktemp("signin")) as server:
        yield server


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def _sign_in(page, url: str, sub: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Sign in").click(timeout=120_000)
    page.locator(f'button[name="sub"][value="{sub}"]').click(timeout=60_000)  # the provider's form
    page.get_by_text("Signed in as").first.wait_for(timeout=120_000)


def test_every_page_asks_for_sign_in_first(signin_server, chromium):
    context = chromium.new_context()
    page = context.new_page()
    for path in ("", "/read_xrays", "/threshold_explorer", "/model_card", "/audit"):
        page.goto(signin_server["url"] + path)
        page.get_by_role("button", name="Sign in").wait_for(timeout=120_000)
        assert page.get_by_text("Decision threshold on P(pneumonia)").count() == 0
        assert page.locator('input[type="file"]').count() == 0
        assert page.locator("img").count() == 0
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0  # no page names either
    context.close()


def test_a_reader_reads_one_film_one_record_and_sign_out_forgets_it(signin_server, chromium):
    context = chromium.new_context()
    page = context.new_page()
    _sign_in(page, signin_server["url"], "reader1")
    assert page.get_by_text("Signed in as Rita Reader (reader)").count() == 1
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Threshold explorer").wait_for(
        timeout=60_000)
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Read X-rays" in nav and "Audit" not in nav
    data = png_bytes(synthetic_xray(400, 7))
    page.locator('input[type="file"]').first.set_input_files(
        [{"name": "Doe_Jane_MRN4711.png", "mimeType": "image/png", "buffer": data}])
    image = page.locator('img[src*="/media/"]').first
    image.wait_for(timeout=180_000)
    media = signin_server["url"] + image.get_attribute("src").replace(signin_server["url"], "")
    assert urllib.request.urlopen(media, timeout=10).status == 200
    rows = audit.AuditStore(signin_server["audit"]).records()
    assert len(rows) == 1
    (row,) = rows
    assert (row["subject"], row["email"], row["action"]) == ("reader1", "rita@hospital.org",
                                                             audit.READING)
    from pneumo.reading import reader
    assert row["digest"] == reader.digest_of(data) and row["trust"] and row["decision"]
    assert "Doe" not in repr(rows) and "4711" not in repr(rows)

    page.get_by_role("button", name="Sign out").click()
    end = page.get_by_role("button", name="End session")  # the provider's own sign-out form
    end.click(timeout=60_000)
    page.get_by_role("button", name="Sign in").wait_for(timeout=120_000)
    deadline = time.time() + 30
    status = 200
    while time.time() < deadline and status == 200:
        try:
            status = urllib.request.urlopen(media, timeout=10).status
        except urllib.error.HTTPError as err:
            status = err.code
        time.sleep(1)
    assert status == 404  # the signed-out session's film is no longer served
    page.goto(signin_server["url"])
    page.get_by_role("button", name="Sign in").wait_for(timeout=120_000)  # the cookie is gone
    context.close()


def test_an_administrator_gets_the_audit_page_and_a_visitor_no_access(signin_server, chromium):
    context = chromium.new_context()
    page = context.new_page()
    _sign_in(page, signin_server["url"], "admin1")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Audit").click()
    page.get_by_text("record(s)").first.wait_for(timeout=60_000)
    assert page.get_by_text("Signed in as Adam Admin (administrator)").count() == 1
    context.close()
    context = chromium.new_context()
    page = context.new_page()
    _sign_in(page, signin_server["url"], "visitor1")
    page.get_by_text("No access").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    assert page.locator('input[type="file"]').count() == 0
    assert page.get_by_text("Decision threshold on P(pneumonia)").count() == 0
    context.close()
