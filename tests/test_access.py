"""Sign-in and roles (issue #24): the role rules, the configuration check, and the gate in AppTest
(signed out, no access, reader, administrator, laptop mode, a wrong [auth], sign-out)."""

from __future__ import annotations

import pytest
from conftest import ROOT, png_bytes, synthetic_xray

from pneumo import audit
from pneumo.app import access

AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x" * 40, "client_id": "pneumo", "client_secret": "s",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}
ROLES = {"claim": "groups", "reader": ["radiology"], "admin": ["pneumo-admins"]}


# --- the rules, without Streamlit ---

def test_role_from_the_configured_claim():
    rules = access.role_rules({"pneumo": {"roles": ROLES}})
    assert access.role_of({"groups": ["radiology"]}, rules) == access.READER
    assert access.role_of({"groups": ["radiology", "pneumo-admins"]}, rules) == access.ADMIN
    assert access.role_of({"groups": "other pneumo-admins"}, rules) == access.ADMIN  # a string
    assert access.role_of({"groups": ["other"]}, rules) is None
    assert access.role_of({"roles": ["radiology"]}, rules) is None  # another claim: no role
    assert access.role_of({}, rules) is None


def test_default_rules_and_a_nested_claim():
    rules = access.role_rules({})
    assert (rules.claim, rules.reader, rules.admin) == ("roles", ("pneumo-reader",),
                                                        ("pneumo-admin",))
    keycloak = access.role_rules({"pneumo": {"roles": {"claim": "realm_access.roles"}}})
    assert access.role_of({"realm_access": {"roles": ["pneumo-reader"]}}, keycloak) == access.READER
    assert access.role_of({"realm_access": "pneumo-reader"}, keycloak) is None


@pytest.mark.parametrize("auth, words", [
    ({**AUTH, "redirect_uri": ""}, "redirect_uri"),
    ({k: v for k, v in AUTH.items() if k != "cookie_secret"}, "cookie_secret"),
    ({**AUTH, "cookie_secret": "short"}, "32 characters"),
    ({**AUTH, "redirect_uri": "http://localhost:8501/"}, "/oauth2callback"),
    ({k: v for k, v in AUTH.items() if k != "client_secret"}, "client_secret"),
    ({k: v for k, v in AUTH.items() if k not in ("client_id", "client_secret",
                                                  "server_metadata_url")}, "names no identity"),
    ({**AUTH, "server_metadata_url": "keycloak"}, "server_metadata_url"),
    ("not a table", "must be a table"),
])
def test_a_wrong_auth_section_is_named(auth, words):
    problem = access.auth_problem({"auth": auth})
    assert problem is not None and words in problem


def test_good_configurations_pass():
    assert access.auth_problem({}) is None  # sign-in off
    assert access.auth_problem({"auth": AUTH}) is None
    named = {k: AUTH[k] for k in ("redirect_uri", "cookie_secret")}
    named["keycloak"] = {k: AUTH[k] for k in ("client_id", "client_secret", "server_metadata_url")}
    assert access.auth_problem({"auth": named}) is None
    assert access.providers(named) == ["keycloak"]
    assert "unknown keys" in access.auth_problem({"auth": AUTH, "pneumo": {"roles": {"x": 1}}})


def test_a_signed_in_actor_is_subject_and_email_laptop_is_the_os_user():
    user = access.user_access({"sub": "abc", "email": "a@b.org", "groups": ["radiology"]},
                              access.role_rules({"pneumo": {"roles": ROLES}}))
    assert (user.actor.subject, user.actor.email, user.role, user.signed_in) == (
        "abc", "a@b.org", access.READER, True)
    laptop = access.laptop_access()
    assert laptop.is_admin and not laptop.signed_in and laptop.actor.subject.startswith("os:")


# --- the gate, in AppTest ---

def _app(user: dict | None, auth: dict | None = AUTH, page: str | None = None, run: bool = True):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    if page is not None:  # a direct first visit of that page's address
        at.switch_page(page)
    if auth is not None:
        at.secrets["auth"] = auth
        at.secrets["pneumo"] = {"roles": ROLES}
    if user is not None:
        at.user = user
    if run:
        at.run()
        assert not at.exception, at.exception
    return at


READER_USER = {"is_logged_in": True, "sub": "r-1", "email": "reader@hospital.org",
               "name": "Rita Reader", "groups": ["radiology"]}
ADMIN_USER = {"is_logged_in": True, "sub": "a-1", "email": "admin@hospital.org",
              "name": "Adam Admin", "groups": ["pneumo-admins"]}


def _texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("title", "markdown", "caption", "error", "info")
                     for e in getattr(at, kind))


def _page_titles(at) -> list[str]:
    return [t.value for t in at.title]


@pytest.mark.parametrize("page", [None, "pages/read_xrays.py", "pages/threshold_explorer.py",
                                  "pages/model_card.py", "pages/audit.py"])
def test_signed_out_every_page_asks_for_sign_in_first(page):
    at = _app({"is_logged_in": False}, page=page)
    assert _page_titles(at) == ["pneumo"]
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.file_uploader and not at.slider and not at.dataframe and not at.get("plotly_chart")


def test_signed_in_with_neither_role_gets_no_access():
    at = _app({**READER_USER, "groups": ["cardiology"]})
    assert _page_titles(at) == ["No access"]
    assert "no pneumo role" in _texts(at)
    assert "Sign out" in [b.label for b in at.button]
    assert not at.file_uploader and not at.slider


def test_a_reader_reads_but_has_no_administrator_parts():
    at = _app(READER_USER)
    assert _page_titles(at) == ["Read X-rays"]
    assert "Signed in as **Rita Reader** (reader)" in _texts(at)
    assert at.file_uploader and "Sign out" in [b.label for b in at.button]
    explorer = _app(READER_USER, page="pages/threshold_explorer.py")
    assert "Threshold explorer" in _page_titles(explorer)
    assert not [b for b in explorer.button if "department" in b.label]
    assert "The department's default threshold" not in [s.value for s in explorer.subheader]
    audit_page = _app(READER_USER, page="pages/audit.py")  # not in a reader's navigation
    assert "Audit" not in _page_titles(audit_page)
    assert not audit_page.dataframe and not audit_page.get("download_button")


def test_an_administrator_sees_the_department_threshold_and_the_audit_page():
    explorer = _app(ADMIN_USER, page="pages/threshold_explorer.py")
    assert "The department's default threshold" in [s.value for s in explorer.subheader]
    at = _app(ADMIN_USER, page="pages/audit.py")
    assert "Audit" in _page_titles(at)
    assert "Signed in as **Adam Admin** (administrator)" in _texts(at)


def test_laptop_mode_says_sign_in_is_off_and_everyone_administers():
    at = _app(None, auth=None)
    assert "Sign-in is off" in _texts(at)
    assert not [b for b in at.button if b.label in ("Sign in", "Sign out")]
    assert "Audit" in _page_titles(_app(None, auth=None, page="pages/audit.py"))


def test_a_wrong_auth_section_stops_with_one_message_not_a_trace():
    at = _app(READER_USER, auth={**AUTH, "cookie_secret": "short"})
    assert not at.exception
    (error,) = at.error
    assert "pneumo cannot start" in error.value and "cookie_secret" in error.value
    assert not at.file_uploader


def test_a_wrong_audit_database_stops_with_one_message(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PNEUMO_AUDIT_URL", f"sqlite:///{blocker}/audit.sqlite3")  # under a file
    at = _app(None, auth=None)
    assert not at.exception
    assert any("pneumo cannot start" in e.value and "audit" in e.value for e in at.error)
    assert not at.file_uploader


def _synthetic_films_trusted(monkeypatch):
    from pneumo.app import ui
    from pneumo.models.quality import QualityChecker

    monkeypatch.setattr(ui, "scope_check", lambda: None)  # a synthetic film: a trusted reading
    monkeypatch.setattr(ui, "ood_detector", lambda: None)
    monkeypatch.setattr(ui, "quality_checker", lambda: QualityChecker())


def test_a_reading_writes_one_record_by_the_signed_in_user(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    monkeypatch.setenv("PNEUMO_AUDIT_URL", url)
    _synthetic_films_trusted(monkeypatch)
    at = _app(READER_USER)
    data = png_bytes(synthetic_xray(280, 3))
    at.file_uploader[0].set_value(("Doe_Jane_1234.png", data, "image/png")).run()
    assert not at.exception, at.exception
    at.session_state["threshold"] = 0.2  # moving the threshold afterwards is no new record
    at.run()
    rows = audit.AuditStore(url).records()
    assert len(rows) == 1
    (row,) = rows
    from pneumo.reading import reader
    assert row["digest"] == reader.digest_of(data)
    assert (row["subject"], row["email"], row["action"]) == ("r-1", "reader@hospital.org",
                                                             audit.READING)
    assert row["trust"] == "trusted" and row["decision"] in ("NORMAL", "PNEUMONIA")
    assert 0 <= row["probability"] <= 1 and row["threshold"] is not None
    assert "Doe" not in repr(rows)


def test_sign_out_forgets_the_readings(monkeypatch, tmp_path):
    from pneumo.app import ui

    monkeypatch.setenv("PNEUMO_AUDIT_URL", f"sqlite:///{tmp_path}/audit.sqlite3")
    _synthetic_films_trusted(monkeypatch)
    at = _app(READER_USER)
    at.file_uploader[0].set_value(("a.png", png_bytes(synthetic_xray(280, 4)), "image/png")).run()
    assert at.session_state[ui.READINGS_KEY]
    next(b for b in at.button if b.label == "Sign out").click().run()
    assert not at.exception, at.exception
    assert ui.READINGS_KEY not in at.session_state
    assert _page_titles(at) == ["pneumo"]  # the sign-in page


def _site_change_script():
    from types import SimpleNamespace

    from pneumo.app import ui

    cal = SimpleNamespace(site="St Mary's", created="2026-12-01", scale=0.9, bias=-1.2,
                          recommended=0.31, high_sensitivity=0.12,
                          counts={"NORMAL": 120, "PNEUMONIA": 80})
    ui.record_site_change(None, cal)
    ui.record_site_change(cal, None)


def test_a_site_calibration_change_is_recorded_with_old_and_new_values(monkeypatch, tmp_path):
    import json

    from streamlit.testing.v1 import AppTest

    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    monkeypatch.setenv("PNEUMO_AUDIT_URL", url)
    at = AppTest.from_function(_site_change_script, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    written, removed = reversed(audit.AuditStore(url).records(action=audit.SITE_CALIBRATION))
    assert written["old_value"] is None and json.loads(written["new_value"])["scale"] == 0.9
    assert json.loads(removed["old_value"])["site"] == "St Mary's" and removed["new_value"] is None
    assert written["subject"].startswith("os:")  # laptop mode: the server's OS user
