"""The audit store (pneumo.audit, issue #24) on SQLite and on a real PostgreSQL: one record per
reading with the right fields and nothing that names the file or holds its pixels, append-only
for the app, settings with their change records, the purge command, the configuration."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import ROOT

from pneumo import audit, config
from pneumo.reading import reader

ACTOR = audit.Actor(subject="sub-123", email="reader@hospital.org", host="ward-pc")
FILE_NAME = "Doe_Jane_19990101_MRN4711.png"


def _reading(probability: float | None = 0.73, name: str = FILE_NAME, seed: int = 1,
             error: str | None = None) -> reader.Reading:
    pixels = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    data = pixels.tobytes()
    return reader.Reading(name=name, digest=reader.digest_of(data), display=pixels,
                          model_input=pixels, probability=None if error else probability,
                          error=error)


def _check_store(store: audit.AuditStore) -> None:
    trusted, unread = _reading(0.73), _reading(name="other.dcm", seed=2, error="not an image")
    store.record_readings(ACTOR, [trusted, unread], 0.5)
    rows = store.records()
    assert len(rows) == 2  # one record per reading
    by_digest = {r["digest"]: r for r in rows}
    row = by_digest[trusted.digest]
    assert (row["subject"], row["email"], row["host"], row["action"]) == (
        "sub-123", "reader@hospital.org", "ward-pc", audit.READING)
    assert row["probability"] == pytest.approx(0.73)
    assert (row["trust"], row["decision"], row["threshold"]) == (
        trusted.trust.state, reader.decision_of(trusted, 0.5), 0.5)
    assert row["decision"] == "PNEUMONIA" and row["trust"] == "trusted"
    assert row["at"].tzinfo is not None and abs(datetime.now(UTC) - row["at"]) < timedelta(minutes=5)
    miss = by_digest[unread.digest]
    assert (miss["probability"], miss["trust"], miss["decision"]) == (None, "not_read", "NOT READ")
    # filters
    assert len(store.records(action=audit.READING, subject="sub-123")) == 2
    assert store.records(subject="someone else") == []
    assert store.records(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert store.subjects() == ["sub-123"]
    # settings: set, change, clear, each one record with old and new values
    assert store.setting(audit.DEFAULT_THRESHOLD_KEY) is None
    store.change_setting(ACTOR, audit.DEFAULT_THRESHOLD_KEY, {"threshold": 0.4}, audit.DEFAULT_THRESHOLD)
    store.change_setting(ACTOR, audit.DEFAULT_THRESHOLD_KEY, {"threshold": 0.3}, audit.DEFAULT_THRESHOLD)
    assert store.setting(audit.DEFAULT_THRESHOLD_KEY) == {"threshold": 0.3}
    store.change_setting(ACTOR, audit.DEFAULT_THRESHOLD_KEY, None, audit.DEFAULT_THRESHOLD)
    assert store.setting(audit.DEFAULT_THRESHOLD_KEY, "unset") == "unset"
    changes = [(r["old_value"], r["new_value"]) for r in
               reversed(store.records(action=audit.DEFAULT_THRESHOLD))]
    assert changes == [(None, '{"threshold": 0.4}'), ('{"threshold": 0.4}', '{"threshold": 0.3}'),
                       ('{"threshold": 0.3}', None)]
    csv_text = audit.to_csv(store.records())
    assert csv_text.splitlines()[0].split(",") == list(audit.COLUMNS)
    assert len(csv_text.splitlines()) == 6
    # nothing names the file, nothing holds its pixels
    with store.engine.connect() as connection:
        dumped = repr([tuple(r) for table in (audit.records, audit.settings)
                       for r in connection.execute(sa.select(table))])
    assert "Doe" not in dumped and "4711" not in dumped and "other.dcm" not in dumped
    assert trusted.digest in dumped


def test_sqlite_store(tmp_path):
    path = tmp_path / "deep" / "audit.sqlite3"
    store = audit.AuditStore(f"sqlite:///{path}")
    _check_store(store)
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # patient-linked: the owner only
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert FILE_NAME.encode() not in raw and b"Doe_Jane" not in raw  # grep the database files
    pixels = _reading().display.tobytes()
    assert pixels[1000:1064] not in raw


def test_the_store_is_append_only_for_the_app():
    public = [name for name in dir(audit.AuditStore) if not name.startswith("_")]
    assert not [n for n in public if any(w in n.lower() for w in
                                         ("update", "delete", "remove", "purge", "clear", "drop"))]
    app_code = "\n".join(p.read_text() for p in (ROOT / "pneumo" / "app").glob("*.py"))
    app_code += "\n".join(p.read_text() for p in (ROOT / "pages").glob("*.py"))
    assert "_purge_older_than" not in app_code and ".delete(" not in app_code


def test_purge_command_removes_old_records_and_records_itself(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/audit.sqlite3"
    store = audit.AuditStore(url)
    store.record_readings(ACTOR, [_reading()], 0.5)
    old = datetime.now(UTC) - timedelta(days=40)
    with store.engine.begin() as connection:  # a record from 40 days ago (as the past would be)
        connection.execute(audit.records.insert(), [{**store._row(
            ACTOR, audit.READING, digest="0" * 64, probability=0.1, trust="trusted",
            decision="NORMAL", threshold=0.5, old=None, new=None), "at": old}])
    monkeypatch.delenv(config.AUDIT_URL_ENV, raising=False)
    done = subprocess.run([sys.executable, "-m", "pneumo.audit", "--purge-older-than", "30",
                           "--url", url], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Removed 1 audit record(s)" in done.stdout
    rows = store.records()
    assert [r["action"] for r in rows] == [audit.PURGE, audit.READING]
    purge = rows[0]
    assert purge["subject"].startswith("os:") and purge["host"] == socket.gethostname()
    assert '"removed": 1' in purge["new_value"]
    bad = subprocess.run([sys.executable, "-m", "pneumo.audit", "--purge-older-than", "0",
                          "--url", url], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "DAYS must be 1 or more" in bad.stderr


def test_configuration(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[audit]\nurl = "sqlite:///~/x/a.sqlite3"\nretention_days = 30\n')
    found = audit.load_settings(environ={}, secrets_file=secrets)
    assert found.url == f"sqlite:///{Path.home()}/x/a.sqlite3" and found.retention_days == 30
    env = audit.load_settings(environ={config.AUDIT_URL_ENV: "postgresql+psycopg://u:pw@h/db"},
                              secrets_file=secrets)
    assert env.url.startswith("postgresql") and audit.shown_url(env.url) == (
        "postgresql+psycopg://u:***@h/db")
    default = audit.load_settings(environ={}, secrets_file=tmp_path / "none.toml")
    assert default.url == f"sqlite:///{Path.home()}/.local/share/pneumo/audit.sqlite3"
    assert default.retention_days == config.AUDIT_RETENTION_DAYS
    assert not default.url.startswith(f"sqlite:///{ROOT}")  # outside the checkout
    with pytest.raises(audit.AuditError, match="retention_days"):
        audit.load_settings({"retention_days": "ever"}, environ={})
    with pytest.raises(audit.AuditError, match="not a database URL"):
        audit.AuditStore("no such thing")


def test_an_unreachable_database_is_one_sentence():
    port = _free_port()
    with pytest.raises(audit.AuditError, match="cannot be opened") as err:
        audit.AuditStore(f"postgresql+psycopg://pneumo@127.0.0.1:{port}/pneumo?connect_timeout=3")
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


# --- PostgreSQL: Debian's, started by the test as a user other than root ---

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL on a free loopback port in a temporary folder, run as 'nobody'
    when this is root (PostgreSQL refuses root); skipped with the reason when none is installed."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (tools/run_tests.sh installs Debian's postgresql "
                    "as root)")
    folder = Path(tempfile.mkdtemp(prefix="pneumo-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(folder, "nobody")
        os.chmod(folder, 0o700)
    port = _free_port()

    def run(*cmd, **kw):
        return subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True,
                              timeout=180, **kw)

    done = run(bindir / "initdb", "-D", data, "-U", "pneumo", "--auth=trust", "-E", "UTF8")
    if done.returncode != 0:
        pytest.skip(f"initdb failed: {done.stderr.strip()[:300]}")
    done = run(bindir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-t", "120", "start",
               "-o", f"-h 127.0.0.1 -p {port} -k {folder}")
    if done.returncode != 0:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        pytest.skip(f"PostgreSQL did not start: {done.stderr.strip()[:200]} {log[-300:]}")
    try:
        for _ in range(60):
            if run(bindir / "pg_isready", "-h", "127.0.0.1", "-p", port).returncode == 0:
                break
            time.sleep(0.5)
        created = run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "pneumo", "audit")
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg://pneumo@127.0.0.1:{port}/audit"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_store(postgres_url):
    store = audit.AuditStore(postgres_url)
    _check_store(store)
    again = audit.AuditStore(postgres_url)  # a second replica: same tables, same records
    assert len(again.records(action=audit.READING)) == 2
    with again.engine.connect() as connection:
        kind = connection.execute(sa.text(
            "select data_type from information_schema.columns where table_name = 'audit_records' "
            "and column_name = 'at'")).scalar_one()
    assert kind.startswith("timestamp")
