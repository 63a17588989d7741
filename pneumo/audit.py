"""The audit trail: who did what to which image, when, and with what result.

One record per action, written when it happens (README, "Sign-in and audit"): a reading of an
upload (the file's SHA-256, never its name or pixels), a corrected copy read, a reading shown
anyway, a change of the department's default threshold or of the site calibration (old and new
values). Who: the signed-in user's subject and e-mail; for a command line, the operating-system
user and host. Records are append-only for the app: :class:`AuditStore` has no update or delete
method. The one delete path is the administrator's command outside the app::

    python -m pneumo.audit --purge-older-than DAYS   # or --purge: the configured retention

The database is any SQLAlchemy URL: SQLite in a folder outside the checkout by default, PostgreSQL
for several replicas (``PNEUMO_AUDIT_URL``, or ``[audit] url`` in ``.streamlit/secrets.toml``).
The tables are made at start-up (``metadata.create_all``); see the README for why there is no
migration tool yet. The same database holds the department's settings (:data:`settings`), so
every replica reads the same default threshold.

Imported by the app and the command lines only (a layer of its own, above ``pneumo.reading``).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import json
import os
import socket
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from pneumo import config
from pneumo.reading import reader

# Actions (the ``action`` column).
READING = "reading"  # a new upload read
READING_CORRECTED = "reading_corrected"  # the copy pneumo turned or inverted back, read on request
READING_SHOWN_ANYWAY = "reading_shown_anyway"  # an out-of-scope reading shown on request
DEFAULT_THRESHOLD = "default_threshold"  # the department's default threshold set or cleared
SITE_CALIBRATION = "site_calibration"  # a site calibration written or removed
PURGE = "purge"  # records older than the retention removed (python -m pneumo.audit)
PACS_SEARCH = "pacs_search"  # a PACS search: its filters, patient id and accession included
PACS_RETRIEVE = "pacs_retrieve"  # a study's images retrieved: the study UID
PACS_SEND = "pacs_send"  # results stored in the PACS: the stored SOP instance UIDs
ACTIONS = (READING, READING_CORRECTED, READING_SHOWN_ANYWAY, DEFAULT_THRESHOLD, SITE_CALIBRATION,
           PURGE, PACS_SEARCH, PACS_RETRIEVE, PACS_SEND)

DEFAULT_THRESHOLD_KEY = "default_threshold"  # the settings row of the department's threshold


def site_summary(calibration) -> dict | None:
    """What a site-calibration record keeps of one: its numbers, no image and no file name."""
    return None if calibration is None else {
        "site": calibration.site, "created": calibration.created, "scale": calibration.scale,
        "bias": calibration.bias, "recommended": calibration.recommended,
        "high_sensitivity": calibration.high_sensitivity, "counts": dict(calibration.counts),
        "set_by": getattr(calibration, "set_by", "")}


class UTCDateTime(sa.types.TypeDecorator):
    """Stored as naive UTC on every back end, read back as an aware UTC datetime."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit times must carry a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()
records = sa.Table(
    "audit_records", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),  # when (UTC)
    sa.Column("subject", sa.String(255), nullable=False, index=True),  # who: token subject, os:user
    sa.Column("email", sa.String(320)),
    sa.Column("host", sa.String(255)),  # for a command line: the machine it ran on
    sa.Column("action", sa.String(40), nullable=False, index=True),
    sa.Column("digest", sa.String(64)),  # the file's SHA-256 (Reading.digest); never its name
    sa.Column("probability", sa.Float),
    sa.Column("trust", sa.String(20)),  # Reading.trust.state
    sa.Column("decision", sa.String(20)),  # reader.decision_of at the threshold in force
    sa.Column("threshold", sa.Float),  # the threshold in force
    sa.Column("old_value", sa.Text),  # a change: JSON of what it was
    sa.Column("new_value", sa.Text),  # ... and of what it became
)
settings = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
)
COLUMNS = tuple(c.name for c in records.columns)


@dataclass(frozen=True)
class Actor:
    """Who does something: a signed-in user (subject and e-mail from the identity token), or the
    operating-system user and host of a command line or of a laptop without sign-in."""

    subject: str
    email: str | None = None
    host: str | None = None

    @classmethod
    def from_os(cls) -> Actor:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container)
            user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        return cls(subject=f"os:{user}", host=socket.gethostname())


class AuditError(RuntimeError):
    """The audit database cannot be opened or written: one sentence, for the user."""


@dataclass(frozen=True)
class AuditSettings:
    url: str  # SQLAlchemy URL, ~ expanded
    retention_days: int


def _file_section(path: Path) -> Mapping:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            section = tomllib.load(f).get("audit", {})
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise AuditError(f"{path} cannot be read: {err}") from None
    if not isinstance(section, Mapping):
        raise AuditError(f"[audit] in {path} must be a table (url = ..., retention_days = ...).")
    return section


def load_settings(section: Mapping | None = None, environ: Mapping[str, str] | None = None,
                  secrets_file: Path | None = None) -> AuditSettings:
    """The database URL and retention: ``PNEUMO_AUDIT_URL``, else ``[audit] url`` (``section``:
    the app's secrets section; else read from ``secrets_file``), else the default SQLite file."""
    env = os.environ if environ is None else environ
    if section is None:
        section = _file_section(config.SECRETS_FILE if secrets_file is None else secrets_file)
    url = env.get(config.AUDIT_URL_ENV) or section.get("url") or config.AUDIT_URL_DEFAULT
    days = section.get("retention_days", config.AUDIT_RETENTION_DAYS)
    if not isinstance(url, str) or not url.strip():
        raise AuditError("[audit] url must be a database URL, e.g. "
                         "postgresql+psycopg://user:password@host/pneumo.")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise AuditError(f"[audit] retention_days must be a whole number of days, not {days!r}.")
    return AuditSettings(url=expand_url(url.strip()), retention_days=days)


def expand_url(url: str) -> str:
    """A SQLite URL's ``~`` expanded (``sqlite:///~/x.sqlite3``); other URLs as they are."""
    prefix = "sqlite:///"
    if url.startswith(prefix + "~"):
        return prefix + str(Path(url[len(prefix):]).expanduser())
    return url


def shown_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def _engine(url: str) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise AuditError(f"The audit database URL is not a database URL: {url!r}.") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # identifiers: owner only
        except OSError as err:
            raise AuditError(f"The audit database's folder {folder} cannot be made: "
                             f"{err.strerror or err}.") from None
    try:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as err:
        raise AuditError(f"The audit database {shown_url(url)} cannot be used: {err}") from None
    if parsed.get_backend_name() == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # WAL: a commit is one append, readers never block
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a record is on disk when the call returns
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()
    return engine


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


class AuditStore:
    """Append-only access to the audit records, and the department's settings.

    Writes: :meth:`record` (one action), :meth:`record_readings` (readings: digest, probability,
    trust, decision), :meth:`change_setting` (a setting and its record, together). Reads:
    :meth:`records`, :meth:`subjects`, :meth:`setting`. There is no update or delete of a record.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)
        try:
            metadata.create_all(self.engine)
            if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "",
                                                                                         ":memory:"):
                os.chmod(self.engine.url.database, 0o600)
        except (sa.exc.SQLAlchemyError, OSError) as err:
            raise AuditError(f"The audit database {shown_url(url)} cannot be opened: "
                             f"{_reason(err)}") from None

    def record(self, actor: Actor, action: str, *, digest: str | None = None,
               probability: float | None = None, trust: str | None = None,
               decision: str | None = None, threshold: float | None = None,
               old=None, new=None) -> None:
        """Append one record, now. ``old`` / ``new``: JSON-able values of a change."""
        self._append(self._row(actor, action, digest=digest, probability=probability, trust=trust,
                               decision=decision, threshold=threshold, old=old, new=new))

    def record_readings(self, actor: Actor, readings: list[reader.Reading], threshold: float,
                        action: str = READING) -> None:
        """One record per reading, in one transaction: the file's SHA-256 (never its name or
        pixels), the probability shown (the site-calibrated one when a site calibration is in
        use), the trust state and the decision at ``threshold``
        (:func:`pneumo.reading.reader.decision_of`)."""
        self._append(*(self._row(
            actor, action, digest=r.digest, probability=_optional_float(r.probability),
            trust=r.trust.state, decision=reader.decision_of(r, threshold),
            threshold=float(threshold), old=None, new=None) for r in readings))

    def _row(self, actor: Actor, action: str, **values) -> dict:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        old, new = values.pop("old"), values.pop("new")
        return {"at": _now(), "subject": actor.subject, "email": actor.email, "host": actor.host,
                "action": action, "old_value": _json(old), "new_value": _json(new), **values}

    def _append(self, *rows: dict) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(records.insert(), list(rows))
        except sa.exc.SQLAlchemyError as err:
            raise AuditError(f"The audit record could not be written to {shown_url(self.url)}: "
                             f"{_reason(err)}") from None

    def records(self, since: datetime | None = None, until: datetime | None = None,
                subject: str | None = None, action: str | None = None,
                limit: int | None = None) -> list[dict]:
        """Records in [since, until), newest first, optionally one subject's or one action's."""
        query = sa.select(records).order_by(records.c.at.desc(), records.c.id.desc())
        if since is not None:
            query = query.where(records.c.at >= since)
        if until is not None:
            query = query.where(records.c.at < until)
        if subject:
            query = query.where(records.c.subject == subject)
        if action:
            query = query.where(records.c.action == action)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def subjects(self) -> list[str]:
        """Everyone with a record (their subjects), sorted."""
        with self.engine.connect() as connection:
            return sorted(connection.execute(sa.select(records.c.subject).distinct()).scalars())

    def setting(self, key: str, default=None):
        """A department setting (JSON value), or ``default`` when never set."""
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(settings.c.value).where(settings.c.key == key)).scalar_one_or_none()
        return default if value is None else json.loads(value)

    def change_setting(self, actor: Actor, key: str, value, action: str) -> None:
        """Set (``value``) or clear (``None``) a setting, and record the change with its old and
        new values, in one transaction."""
        row = None
        try:
            with self.engine.begin() as connection:
                old = connection.execute(sa.select(settings.c.value).where(
                    settings.c.key == key)).scalar_one_or_none()
                connection.execute(settings.delete().where(settings.c.key == key))
                if value is not None:
                    connection.execute(settings.insert().values(
                        key=key, value=_json(value), updated_at=_now(), updated_by=actor.subject))
                row = self._row(actor, action, digest=None, probability=None, trust=None,
                                decision=None, threshold=None,
                                old=None if old is None else json.loads(old), new=value)
                connection.execute(records.insert(), [row])
        except sa.exc.SQLAlchemyError as err:
            raise AuditError(f"The setting could not be written to {shown_url(self.url)}: "
                             f"{_reason(err)}") from None


def _reason(err: Exception) -> str:
    original = getattr(err, "orig", None)
    text = str(original if original is not None else err).strip().splitlines()
    return text[0] if text else type(err).__name__


def to_csv(rows: list[dict]) -> str:
    """Records as CSV, the columns of the table, times in ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (v.isoformat() if isinstance(v, datetime) else v)
                         for k, v in row.items()})
    return out.getvalue()


def _purge_older_than(url: str, days: int, actor: Actor) -> tuple[int, datetime]:
    """Delete the records older than ``days`` and record that it was done (the one delete
    path; the administrator's command, never the app)."""
    store = AuditStore(url)
    cutoff = _now() - timedelta(days=days)
    try:
        with store.engine.begin() as connection:
            removed = connection.execute(records.delete().where(records.c.at < cutoff)).rowcount
            connection.execute(records.insert(), [store._row(
                actor, PURGE, digest=None, probability=None, trust=None, decision=None,
                threshold=None, old={"older_than_days": days, "before": cutoff.isoformat()},
                new={"removed": removed})])
    except sa.exc.SQLAlchemyError as err:
        raise AuditError(f"Nothing was purged from {shown_url(url)}: {_reason(err)}") from None
    return removed, cutoff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.audit",
        description="The audit trail's administration: remove records older than the retention. "
                    "The database: PNEUMO_AUDIT_URL, else [audit] url in .streamlit/secrets.toml, "
                    f"else {config.AUDIT_URL_DEFAULT}.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--purge-older-than", type=int, metavar="DAYS",
                       help="delete the records older than DAYS days (and record that)")
    which.add_argument("--purge", action="store_true",
                       help="the same with the configured retention ([audit] retention_days, "
                            f"default {config.AUDIT_RETENTION_DAYS})")
    parser.add_argument("--url", help="the audit database URL (instead of the configuration)")
    args = parser.parse_args(argv)
    try:
        found = load_settings()
        url = expand_url(args.url) if args.url else found.url
        days = found.retention_days if args.purge else args.purge_older_than
        if days is None or days < 1:
            parser.error("DAYS must be 1 or more")
        removed, cutoff = _purge_older_than(url, days, Actor.from_os())
    except AuditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Removed {removed} audit record(s) from before {cutoff:%Y-%m-%d %H:%M} UTC in "
          f"{shown_url(url)} (the purge itself is recorded).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
