"""The PACS as a reading source: DICOMweb search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS).

Off by default: nothing is contacted unless a server is configured, by the environment
(``PNEUMO_PACS_URL``, ``PNEUMO_PACS_USERNAME``, ``PNEUMO_PACS_PASSWORD`` or ``PNEUMO_PACS_TOKEN``,
``PNEUMO_PACS_TIMEOUT``) or by ``.streamlit/secrets.toml``::

    [pacs]
    url = "https://pacs.example.org/dicom-web"
    username = "..."      # basic authentication, or
    token = "..."         # a bearer token
    timeout = 20          # seconds, every call

The environment wins over the file, a ``url`` argument over both. Every call has a timeout and
no retries; every failure becomes a :class:`PacsError` whose text is one sentence a person reads
(server down, wrong credentials, timeout, a study without images). Retrieved instances are kept
in memory only, as the bytes of the DICOM file the server sent (WADO-RS, no transcoding): pneumo
reads them exactly as an uploaded file; an instance stored without its 128-byte preamble and
"DICM" is parsed and written as a file. :meth:`PacsClient.retrieve_all` retrieves several
instances at once (``config.PACS_RETRIEVE_WORKERS`` connections). Nothing pulled is written to
disk or to a log: the DICOMweb
client's and urllib3's own loggers (which would log query URLs with a patient id) are held at
WARNING.
"""

from __future__ import annotations

import io
import logging
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from pneumo import config

ENV_URL, ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN, ENV_TIMEOUT = (
    "PNEUMO_PACS_URL", "PNEUMO_PACS_USERNAME", "PNEUMO_PACS_PASSWORD", "PNEUMO_PACS_TOKEN",
    "PNEUMO_PACS_TIMEOUT")
SECRETS_FILE = config.PROJECT_ROOT / ".streamlit" / "secrets.toml"
SECRETS_SECTION = "pacs"
DEFAULT_TIMEOUT = 20.0  # seconds, for connecting and for each answer
MODALITIES = ("CR", "DX")  # computed and digital radiography
FRONTAL_VIEWS = ("PA", "AP")
BODY_PART = "CHEST"
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # the instance as stored, not transcoded
RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
READ_CHUNK = 1 << 20  # bytes read from the socket at a time when retrieving an instance
MAX_RESULTS = 10_000  # a search finding more is refused: narrow it

_QUIET_LOGGERS = ("dicomweb_client", "urllib3")


class PacsError(Exception):
    """A PACS problem; ``str(err)`` is one sentence a person reads."""


class PacsNotConfigured(PacsError):
    """No PACS is configured (or its configuration is unusable)."""


class PacsUnreachable(PacsError):
    """The server could not be reached (down, wrong address)."""


class PacsAuthError(PacsError):
    """The server refused the credentials."""


class PacsTimeout(PacsError):
    """The server did not answer in time."""


class PacsNoImages(PacsError):
    """A study holds no frontal chest image to read."""


class PacsRefused(PacsError):
    """The server answered with an error or something pneumo cannot use."""


class PacsNotFound(PacsRefused):
    """The server does not have the study or image asked for (HTTP 404 on a named UID)."""


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to sign in; the password and token never appear in a repr."""

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def server(self) -> str:
        """scheme://host[:port], for messages (never a path, query or credentials)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _section(secrets: Mapping, where) -> Mapping:
    section = secrets.get(SECRETS_SECTION, {})
    if not isinstance(section, Mapping):
        raise PacsNotConfigured(f"[{SECRETS_SECTION}] in {where} must be a table of settings.")
    return section


def _secrets(path: Path) -> Mapping:
    """The ``[pacs]`` section of ``path`` (read only when the environment leaves something unsaid)."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            found = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise PacsNotConfigured(f"{path} could not be read ({err}); fix it or remove its "
                                f"[{SECRETS_SECTION}] section.") from None
    return _section(found, path)


def load_settings(url: str | None = None, environ: Mapping[str, str] | None = None,
                  secrets_file: Path | None = None,
                  secrets: Mapping | None = None) -> PacsSettings | None:
    """The configured PACS, or None when no URL is configured anywhere (the PACS is off).

    ``secrets``: the secrets already read (the app passes ``st.secrets``), whose ``[pacs]``
    section then stands for the file's. Raises :class:`PacsNotConfigured` for a configuration
    that cannot work (an address that is not http(s), a user name without a password, a timeout
    that is not a positive number)."""
    environ = os.environ if environ is None else environ
    path = SECRETS_FILE if secrets_file is None else secrets_file
    keys = {"url": ENV_URL, "username": ENV_USERNAME, "password": ENV_PASSWORD,
            "token": ENV_TOKEN, "timeout": ENV_TIMEOUT}
    values = {name: environ.get(env, "") for name, env in keys.items()}
    if not all(values[k] for k in ("url", "timeout")) or not (
            values["token"] or (values["username"] and values["password"])):
        from_file = _secrets(path) if secrets is None else _section(secrets, "the secrets")
        for name in keys:
            if not values[name] and from_file.get(name) not in (None, ""):
                values[name] = str(from_file[name])
    if url:
        values["url"] = url
    if not values["url"]:
        return None
    address = values["url"].strip().rstrip("/")
    if urlsplit(address).scheme not in ("http", "https") or not urlsplit(address).hostname:
        raise PacsNotConfigured("The PACS address must be an http:// or https:// URL of its "
                                "DICOMweb service, such as https://pacs.example.org/dicom-web.")
    if values["username"] and not values["password"] and not values["token"]:
        raise PacsNotConfigured("A PACS user name is configured without a password.")
    try:
        timeout = float(values["timeout"]) if values["timeout"] else DEFAULT_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 600:
        raise PacsNotConfigured("The PACS timeout must be a number of seconds between 0 and 600.")
    return PacsSettings(url=address, username=values["username"], password=values["password"],
                        token=values["token"], timeout=timeout)


@dataclass(frozen=True)
class Study:
    """A study found by a search. The patient fields are for a clinician's screen only: they are
    left out of the repr, and the batch command never prints or writes them."""

    study_instance_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    study_time: str = ""  # HHMMSS[.frac], as the server gives it
    n_instances: int | None = None
    accession_number: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: str = field(default="", repr=False)
    study_description: str = field(default="", repr=False)


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study, as a search describes it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    modality: str = ""
    view_position: str = ""
    body_part: str = ""
    series_description: str = ""


def _value(item: Mapping, tag: str) -> str:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON object, as text ("" if none)."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    value = values[0]
    if isinstance(value, Mapping):  # a person name
        return str(value.get("Alphabetic", ""))
    return str(value).strip()


def readable_name(name: str) -> str:
    """A DICOM person name as a person reads it: ``DOE^JANE^^^`` as ``DOE, JANE`` (family name,
    comma, then prefix, given, middle names and suffix; empty components dropped). A name with
    no caret is returned as it is."""
    from pydicom.valuerep import PersonName

    if "^" not in name:
        return name
    person = PersonName(name)
    rest = " ".join(part for part in (person.name_prefix, person.given_name, person.middle_name,
                                      person.name_suffix) if part.strip())
    family = person.family_name.strip()
    return ", ".join(part for part in (family, " ".join(rest.split())) if part)


def _values(item: Mapping, tag: str) -> tuple[str, ...]:
    return tuple(str(v).strip() for v in (item.get(tag) or {}).get("Value") or [])


def date_range(since: date | None, until: date | None) -> str:
    """A DICOM date range: ``YYYYMMDD-YYYYMMDD``, open at either end ("" for none)."""
    if since is None and until is None:
        return ""
    return (since.strftime("%Y%m%d") if since else "") + "-" + (
        until.strftime("%Y%m%d") if until else "")


def is_frontal_chest(ref: InstanceRef) -> bool:
    """A CR or DX image of the chest, PA or AP: each fact, where the server states it, must
    agree (an absent view or body part does not exclude an image; the scope check still reads
    the header)."""
    return (ref.modality.upper() in MODALITIES
            and (not ref.body_part or ref.body_part.upper() == BODY_PART)
            and (not ref.view_position or ref.view_position.upper() in FRONTAL_VIEWS))


def as_file_bytes(dataset) -> bytes:
    """``dataset`` as the bytes of a DICOM file: preamble, "DICM" and file meta, in memory."""
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def as_file_dataset(dataset):
    """A copy of ``dataset`` that any DICOM writer writes as a file (with its preamble and
    "DICM"): an instance stored without them cannot be parsed when it is retrieved."""
    from pydicom import dcmread

    return dcmread(io.BytesIO(as_file_bytes(dataset)))


def header_of(data: bytes):
    """The data set of a DICOM file without its pixel data (for building results)."""
    from pydicom import dcmread

    return dcmread(io.BytesIO(data), stop_before_pixels=True)


def single_part(body: bytes, content_type: str) -> bytes:
    """The one part of a WADO-RS instance answer (``multipart/related``; a server that sends the
    part bare, as ``application/dicom``, gives it as it is). Raises ValueError for anything else."""
    media_type, *params = [p.strip() for p in content_type.split(";")]
    if media_type.lower() == "application/dicom":
        return body
    if media_type.lower() != "multipart/related":
        raise ValueError(f"unexpected media type {media_type!r}")
    boundary = next((v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)
                     if k.strip().lower() == "boundary"), "")
    if not boundary:
        return body
    marker = b"--" + boundary.encode("ascii")
    first = body.find(marker)
    head_end = body.find(b"\r\n\r\n", first)
    if first < 0 or head_end < 0:
        raise ValueError("no part in the answer")
    start = head_end + 4
    length = next((line.split(b":", 1)[1].strip() for line in
                   body[first + len(marker):head_end].split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), b"")
    end = start + int(length) if length.isdigit() else body.find(b"\r\n" + marker, start)
    if end < start or end > len(body) or body.find(b"\r\n" + marker, end) != end:
        raise ValueError("the part does not end at the boundary")
    if not body.startswith(b"--\r\n", end + 2 + len(marker)) and not body.startswith(
            b"--", end + 2 + len(marker)):
        raise ValueError("more than one part in an instance's answer")
    return body[start:end]


def _named(ref: InstanceRef) -> str:
    """An instance as a message names it: its SOP Instance UID and its study's."""
    return f"image {ref.sop_instance_uid} of study {ref.study_instance_uid}"


def quiet_http_logs() -> None:
    """Hold the HTTP libraries' loggers at WARNING: at DEBUG they log query URLs (with a patient
    id or accession number) and request headers (with credentials)."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


class PacsClient:
    """Search, retrieve and store over DICOMweb, with the timeout on every call and no retries;
    every failure is a :class:`PacsError`."""

    def __init__(self, settings: PacsSettings, session=None):
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session

        quiet_http_logs()
        self.settings = settings
        session = session if session is not None else create_session()
        headers = {}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.username:
            session.auth = (settings.username, settings.password)
        self._session, self._headers = session, headers
        self._client = DICOMwebClient(settings.url, session=session, headers=headers or None,
                                      timeout=(settings.timeout, settings.timeout))
        self._client.set_http_retry_params(retry=False)

    def _call(self, doing: str, function, *args, missing: str = "", **kwargs):
        """``function(*args, **kwargs)``, its failures turned into one-sentence PacsErrors.
        ``missing``: what is asked for by its UID ("study ...", "image ... of study ..."); an
        HTTP 404 then is :class:`PacsNotFound` naming it, not a wrong address."""
        import requests
        from pydicom.errors import InvalidDicomError

        where = self.settings.server
        try:
            return function(*args, **kwargs)
        except requests.Timeout:
            raise PacsTimeout(f"The PACS at {where} did not answer within "
                              f"{self.settings.timeout:g} s while {doing}; try again later, or "
                              "ask IT whether it is running.") from None
        except requests.ConnectionError:
            raise PacsUnreachable(f"The PACS at {where} could not be reached while {doing}: "
                                  "the server is down or the address is wrong.") from None
        except requests.HTTPError as err:
            code = err.response.status_code if err.response is not None else 0
            if code in (401, 403):
                raise PacsAuthError(f"The PACS at {where} refused pneumo's credentials (HTTP "
                                    f"{code}) while {doing}: check the user name and password, "
                                    "or the token.") from None
            if code == 404 and missing:
                raise PacsNotFound(f"The PACS at {where} does not have {missing} (HTTP 404 while "
                                   f"{doing}): it may have been deleted or moved; the connection "
                                   "and the credentials are fine.") from None
            if code == 404:
                raise PacsRefused(f"The PACS at {where} has no such resource (HTTP 404) while "
                                  f"{doing}: check that the address is its DICOMweb "
                                  "service.") from None
            raise PacsRefused(f"The PACS at {where} answered with an error (HTTP {code}) "
                              f"while {doing}.") from None
        except requests.RequestException as err:
            raise PacsUnreachable(f"The PACS at {where} could not be used while {doing} "
                                  f"({type(err).__name__}).") from None
        except (InvalidDicomError, ValueError, KeyError, TypeError, AttributeError):
            raise PacsRefused(f"The PACS at {where} sent an answer pneumo could not understand "
                              f"while {doing}.") from None

    def _paged(self, doing: str, function, key: str, missing: str = "", **kwargs) -> list[dict]:
        """Every result of a search: asked for at once (a limit above :data:`MAX_RESULTS`), then
        from where the answer stopped, until an answer brings nothing new (a server that caps
        its answers, or ignores the offset). More than :data:`MAX_RESULTS` is refused.
        (dicomweb-client's ``get_remaining`` pages without a limit; Orthanc 1.10 then ignores
        the offset and the client loops forever. Orthanc 1.10 also drops results when it pages
        a ModalitiesInStudy search, so small pages are not used.)"""
        results: dict[str, dict] = {}
        offset = 0
        while True:
            page = self._call(doing, function, limit=MAX_RESULTS + 1, offset=offset,
                              missing=missing, **kwargs)
            new = {_value(item, key): item for item in page if _value(item, key) not in results}
            results.update(new)
            if len(results) > MAX_RESULTS:
                raise PacsRefused(f"The search found more than {MAX_RESULTS} results while "
                                  f"{doing}; narrow it (dates, patient or accession number).")
            if not new:
                return list(results.values())
            offset += len(page)

    def search_studies(self, since: date | None = None, until: date | None = None,
                       patient_id: str = "", accession_number: str = "") -> list[Study]:
        """Studies with a CR or DX series (one search per modality, merged), in the date range,
        of the patient, with the accession number; by study date."""
        filters = {}
        if dates := date_range(since, until):
            filters["StudyDate"] = dates
        if patient_id:
            filters["PatientID"] = patient_id
        if accession_number:
            filters["AccessionNumber"] = accession_number
        fields = ["StudyInstanceUID", "StudyDate", "StudyTime", "ModalitiesInStudy",
                  "AccessionNumber", "PatientID", "PatientName", "NumberOfStudyRelatedInstances",
                  "PatientBirthDate", "StudyDescription"]
        found: dict[str, tuple[str, Study]] = {}
        for modality in MODALITIES:
            items = self._paged("searching for studies", self._client.search_for_studies,
                                "0020000D", fields=fields,
                                search_filters={**filters, "ModalitiesInStudy": modality})
            for item in items:
                uid = _value(item, "0020000D")
                if not uid or uid in found:
                    continue
                count = _value(item, "00201208")
                found[uid] = (_value(item, "00080030"), Study(
                    study_instance_uid=uid, study_date=_value(item, "00080020"),
                    modalities=_values(item, "00080061"), study_time=_value(item, "00080030"),
                    n_instances=int(count) if count.isdigit() else None,
                    accession_number=_value(item, "00080050"), patient_id=_value(item, "00100020"),
                    patient_name=_value(item, "00100010"),
                    patient_birth_date=_value(item, "00100030"),
                    study_description=_value(item, "00081030")))
        return [study for _, study in sorted(found.values(),
                                             key=lambda t: (t[1].study_date, t[0]))]

    def instances(self, study_instance_uid: str, modality: str = "") -> list[InstanceRef]:
        """Every instance of a study (of ``modality`` only, if given)."""
        filters = {"Modality": modality} if modality else None
        items = self._paged("listing the images of a study", self._client.search_for_instances,
                            "00080018", missing=f"study {study_instance_uid}",
                            study_instance_uid=study_instance_uid, search_filters=filters,
                            fields=["SeriesInstanceUID", "SOPInstanceUID", "Modality",
                                    "ViewPosition", "BodyPartExamined", "SeriesDescription"])
        refs = [InstanceRef(study_instance_uid=_value(i, "0020000D") or study_instance_uid,
                            series_instance_uid=_value(i, "0020000E"),
                            sop_instance_uid=_value(i, "00080018"), modality=_value(i, "00080060"),
                            view_position=_value(i, "00185101"), body_part=_value(i, "00180015"),
                            series_description=_value(i, "0008103E"))
                for i in items]
        return [r for r in refs if r.series_instance_uid and r.sop_instance_uid
                and (not modality or r.modality.upper() == modality.upper())]

    def frontal_images(self, study_instance_uid: str) -> list[InstanceRef]:
        """The study's frontal chest images (:func:`is_frontal_chest`); raises
        :class:`PacsNoImages` when there is none."""
        refs = [r for r in self.instances(study_instance_uid) if is_frontal_chest(r)]
        if not refs:
            raise PacsNoImages(f"Study {study_instance_uid} holds no frontal chest image (CR or "
                               "DX, PA or AP) to read.")
        return refs

    def retrieve_dataset(self, ref: InstanceRef):
        """The instance as a pydicom data set, as stored (no transcoding asked), in memory."""
        return self._call("retrieving an image", self._client.retrieve_instance,
                          ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid,
                          missing=_named(ref), media_types=ANY_TRANSFER_SYNTAX)

    def _instance_bytes(self, ref: InstanceRef) -> bytes:
        """WADO-RS Retrieve Instance, the part as sent (dicomweb-client's ``retrieve_instance``
        parses the whole instance with pydicom: a reader wants the file's bytes)."""
        import requests
        from urllib3.exceptions import ReadTimeoutError

        url = (f"{self.settings.url}/studies/{ref.study_instance_uid}/series/"
               f"{ref.series_instance_uid}/instances/{ref.sop_instance_uid}")
        with self._session.get(url, headers={**self._headers, "Accept": RETRIEVE_ACCEPT},
                               timeout=(self.settings.timeout, self.settings.timeout),
                               stream=True) as response:
            response.raise_for_status()
            try:
                body = b"".join(response.iter_content(READ_CHUNK))
            except requests.ConnectionError as err:  # requests reports a read timeout so here
                if isinstance(err.args[0] if err.args else None, ReadTimeoutError):
                    raise requests.Timeout(str(err)) from None
                raise
            return single_part(body, response.headers.get("Content-Type", ""))

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance as the bytes of a DICOM file, in memory: read it like an upload. The
        file as the server sent it; one stored without its preamble and "DICM" is parsed and
        written as a file."""
        data = self._call("retrieving an image", self._instance_bytes, ref, missing=_named(ref))
        if data[128:132] == b"DICM":
            return data

        def as_file(data: bytes) -> bytes:
            from pydicom import dcmread

            return as_file_bytes(dcmread(io.BytesIO(data), force=True))

        return self._call("reading a retrieved image", as_file, data)

    def retrieve_all(self, refs: Sequence[InstanceRef], workers: int | None = None,
                     then: Callable[[InstanceRef, bytes], object] | None = None,
                     ahead: int | None = None) -> Iterator[object]:
        """:meth:`retrieve` each instance, ``workers`` at once (default
        ``config.PACS_RETRIEVE_WORKERS``), yielded in the order of ``refs``: each item is the
        file's bytes, or ``then(ref, data)`` run on the retrieving thread (the bytes are dropped
        when it returns), or the :class:`PacsError` of that instance (yielded, never raised).
        At most ``workers`` files are being retrieved or handled at once; at most ``ahead``
        (default ``2 * workers``) items are started before the caller takes them."""
        refs = list(refs)
        workers = max(1, min(workers or config.PACS_RETRIEVE_WORKERS, len(refs) or 1))
        ahead = max(ahead or 2 * workers, 1)

        def one(ref: InstanceRef):
            try:
                data = self.retrieve(ref)
                return data if then is None else then(ref, data)
            except PacsError as err:
                return err

        pool = ThreadPoolExecutor(workers, thread_name_prefix="pneumo-pacs")
        try:
            futures = [pool.submit(one, ref) for ref in refs[:ahead]]
            for i in range(len(refs)):
                if i + ahead < len(refs):
                    futures.append(pool.submit(one, refs[i + ahead]))
                yield futures[i].result()
                futures[i] = None
        finally:  # a caller that stops early waits only for the retrievals under way
            pool.shutdown(wait=True, cancel_futures=True)

    def store(self, datasets: Sequence, study_instance_uid: str | None = None) -> None:
        """Store the data sets (STOW-RS), each written as a DICOM file; raises
        :class:`PacsRefused` when the server reports any of them failed."""
        datasets = [as_file_dataset(ds) for ds in datasets]
        if not datasets:
            return
        answer = self._call("storing results", self._client.store_instances, datasets,
                            study_instance_uid=study_instance_uid)
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsRefused(f"The PACS at {self.settings.server} refused to store {len(failed)} "
                              f"of {len(datasets)} result objects.")


def connect(url: str | None = None, environ: Mapping[str, str] | None = None,
            secrets_file: Path | None = None) -> PacsClient:
    """A client for the configured PACS; :class:`PacsNotConfigured` when there is none."""
    settings = load_settings(url, environ, secrets_file)
    if settings is None:
        raise PacsNotConfigured(
            f"No PACS is configured: give its DICOMweb address (--url), set {ENV_URL}, or add "
            f"a [{SECRETS_SECTION}] section with a url to .streamlit/secrets.toml.")
    return PacsClient(settings)
