"""The From PACS page (issue #23, item 2): search the PACS, choose studies, read their frontal
images through the uploads' path (cards and worklist on Read X-rays), send the results back.

For signed-in users only: with a PACS configured but sign-in off, the page says so and contacts
nothing (the batch command, ``python -m pneumo.pacs``, is the PACS's way in without sign-in). Every
PACS call has the configured timeout; every failure is the one sentence of its
:class:`pneumo.io.pacs.PacsError`. Audit: one record per search (its filters, patient id and
accession number included), per study retrieved, per reading (:func:`pneumo.app.ui.read_new`) and
per result stored. Pulled images stay in memory: the bytes until they are read, then the reading
and the header without pixels (to store results in the study) in the session. Patient names and
ids are shown on this page and on the cards' titles only, never logged. Every session key of this
page starts with ``pacs_`` (:func:`pneumo.app.ui.forget_session` drops them at sign-out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import streamlit as st

from pneumo import audit, config
from pneumo.app import access, ui
from pneumo.evaluation import artifacts
from pneumo.io import pacs
from pneumo.reading import trust as trust_states
from pneumo.reading import wording
from pneumo.reading.pacs_results import SR_SC, Sender
from pneumo.reading.reader import decision_of

SIGN_IN_REQUIRED = (
    "Reading from the PACS is for signed-in users, and sign-in is off on this server: add an "
    "[auth] section (your identity provider) and the [pneumo.roles] that make readers and "
    "administrators to .streamlit/secrets.toml, as README's \"Sign-in and audit\" shows; until "
    "then, read PACS studies with the batch command, python -m pneumo.pacs.")
NOT_CONFIGURED = ("No PACS is configured: set PNEUMO_PACS_URL, or add a [pacs] section with its "
                  "DICOMweb url to .streamlit/secrets.toml (README, \"From the PACS\").")

SEARCH_KEY = "pacs_search_result"  # SearchResult of the last search
READ_KEY = "pacs_read_result"  # what the last "Read selected" did (lines)
SENT_KEY = "pacs_sent_result"  # what the last "Send results to PACS" did (lines, table)


@dataclass(frozen=True)
class StudyRow:
    """A study found, with its frontal chest images (none: ``problem`` says why)."""

    study: pacs.Study
    images: tuple[pacs.InstanceRef, ...]
    problem: str = ""


@dataclass(frozen=True)
class SearchResult:
    rows: tuple[StudyRow, ...]
    found: int  # studies the search found (more than listed when over config.PACS_MAX_STUDIES)


def _dicom_date(value: str) -> date | None:
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return None


def shown_date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD, else as it is."""
    found = _dicom_date(value)
    return found.isoformat() if found else value


def age_at(birth: str, on: str) -> str:
    """The age at the study ("3 y", or "8 mo" under 2 years); "" when a date is unknown."""
    born, then = _dicom_date(birth), _dicom_date(on)
    if born is None or then is None or then < born:
        return ""
    months = (then.year - born.year) * 12 + then.month - born.month - (then.day < born.day)
    return f"{months} mo" if months < 24 else f"{months // 12} y"


def patient_of(study: pacs.Study) -> str:
    """The patient as every place on this page names them: the readable name
    (:func:`pneumo.io.pacs.readable_name`), else the patient id."""
    return pacs.readable_name(study.patient_name) or study.patient_id or "(no name)"


def shown_time(value: str) -> str:
    """A DICOM time (HHMMSS[.frac]) as HH:MM, else as it is."""
    digits = value.split(".")[0]
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 and digits.isdigit() else value


def study_mark(study: pacs.Study) -> str:
    """What tells a patient's studies of one day apart: the accession number, else the study
    time (if any) and the end of the Study Instance UID."""
    if study.accession_number:
        return study.accession_number
    when = f"{shown_time(study.study_time)} " if study.study_time else ""
    return f"{when}study \u2026{study.study_instance_uid[-8:]}"


def image_label(study: pacs.Study, number: int) -> str:
    """A PACS image's name on its card and worklist row, one per image: patient, study date,
    accession number (:func:`study_mark`), image number."""
    return (f"{patient_of(study)} \u00b7 {shown_date(study.study_date)} \u00b7 {study_mark(study)}"
            f" \u00b7 image {number}")


def study_label(row: StudyRow) -> str:
    s = row.study
    accession = f" \u00b7 {s.accession_number}" if s.accession_number else ""
    return (f"{patient_of(s)} \u00b7 {shown_date(s.study_date)}{accession} "
            f"({wording.plural(len(row.images), 'frontal image')})")


def _record(action: str, new: dict) -> bool:
    """One audit record by this session's user; False (said on the page) when it cannot be
    written: then nothing more is done (pneumo does nothing it could not record)."""
    try:
        ui.audit_store().record(access.current().actor, action, new=new)
    except audit.AuditError as err:
        st.error(f"{err} Nothing more was done: pneumo does nothing it could not record.",
                 icon=":material/error:")
        return False
    return True


def department_threshold() -> float:
    """The threshold results are sent at: the department's default (the audit database's
    setting), else the recommended one; never a reader's own slider."""
    return artifacts.round_threshold(ui.start_threshold())


def page() -> None:
    """The page below its title."""
    if not access.current().signed_in:
        st.warning(SIGN_IN_REQUIRED, icon=":material/lock:")
        st.stop()
    try:
        settings = ui.pacs_settings()
    except pacs.PacsNotConfigured as err:
        st.error(str(err), icon=":material/error:")
        st.stop()
    if settings is None:
        st.info(NOT_CONFIGURED, icon=":material/info:")
        st.stop()
    ui.site_banner()
    st.caption(
        f"Studies of {settings.server} with a CR or DX image; pneumo reads their frontal chest "
        f"images (PA or AP). At most **{config.PACS_MAX_IMAGES} images** are retrieved and held "
        "in memory at once: choose fewer studies if a selection holds more. Images are read in "
        "memory, never written to disk; their readings join the cards and worklist of Read "
        f"X-rays, named by patient, study date and accession number. Every PACS call gives up after "
        f"{settings.timeout:g} s. Searches, studies opened, readings and results sent are "
        "recorded in the audit trail under your name.")
    search_section(settings)
    read_section(settings)
    send_section(settings)


def search_section(settings: pacs.PacsSettings) -> None:
    today = date.today()
    dates_col, patient_col, accession_col = st.columns([1.4, 1, 1])
    dates = dates_col.date_input("Study dates", (today - timedelta(days=7), today),
                                 key="pacs_dates", format="YYYY-MM-DD")
    patient_id = patient_col.text_input("Patient ID", key="pacs_patient_id").strip()
    accession = accession_col.text_input("Accession number", key="pacs_accession").strip()
    any_date = st.checkbox("Any date (with a patient ID or accession number)",
                           key="pacs_any_date")
    if not st.button("Search", key="pacs_search", type="primary", icon=":material/search:"):
        return
    st.session_state.pop(READ_KEY, None)
    if any_date:
        if not (patient_id or accession):
            st.error("Give a patient ID or an accession number to search any date: pneumo does "
                     "not list a whole PACS.", icon=":material/error:")
            return
        since = until = None
    else:
        picked = list(dates) if isinstance(dates, tuple | list) else [dates]
        if not picked or not isinstance(picked[0], date):
            st.error("Choose the study dates to search.", icon=":material/error:")
            return
        since, until = picked[0], picked[-1]
    st.session_state.pop(SEARCH_KEY, None)
    st.session_state["pacs_chosen"] = []
    st.session_state["pacs_all"] = False
    try:
        client = pacs.PacsClient(settings)
        with st.spinner("Searching the PACS..."):
            studies = client.search_studies(since, until, patient_id, accession)
    except pacs.PacsError as err:
        st.error(str(err), icon=":material/error:")
        return
    if not _record(audit.PACS_SEARCH, {
            "since": str(since or ""), "until": str(until or ""), "patient_id": patient_id,
            "accession": accession, "studies_found": len(studies)}):
        return
    listed = sorted(studies, key=lambda s: s.study_date, reverse=True)[:config.PACS_MAX_STUDIES]
    rows = []
    try:
        with st.spinner("Listing the studies' images..."):
            for study in listed:
                try:
                    rows.append(StudyRow(study, tuple(client.frontal_images(
                        study.study_instance_uid))))
                except pacs.PacsNoImages:
                    rows.append(StudyRow(study, (), "no frontal chest image (CR or DX, PA or AP)"))
    except pacs.PacsError as err:
        st.error(str(err), icon=":material/error:")
        return
    st.session_state[SEARCH_KEY] = SearchResult(tuple(rows), len(studies))


def studies_table(rows: tuple[StudyRow, ...]):
    import pandas as pd

    return pd.DataFrame([{
        "Patient": patient_of(r.study), "Patient ID": r.study.patient_id,
        "Birth date": shown_date(r.study.patient_birth_date),
        "Age": age_at(r.study.patient_birth_date, r.study.study_date),
        "Study date": shown_date(r.study.study_date), "Accession": r.study.accession_number,
        "Description": r.study.study_description, "Frontal images": len(r.images),
    } for r in rows])


def read_section(settings: pacs.PacsSettings) -> None:
    result: SearchResult | None = st.session_state.get(SEARCH_KEY)
    if result is None:
        return
    if not result.rows:
        st.info("No study matches this search.", icon=":material/search_off:")
        return
    more = (f" (of {result.found}: the newest {len(result.rows)} are listed; narrow the search "
            "for the others)" if result.found > len(result.rows) else "")
    st.markdown(f"**{wording.plural(len(result.rows), 'study', 'studies')} found**{more}")
    st.dataframe(studies_table(result.rows), hide_index=True, width="stretch")
    readable = {r.study.study_instance_uid: r for r in result.rows if r.images}
    empty = [r for r in result.rows if not r.images]
    if empty:
        st.caption(f"{wording.plural(len(empty), 'study', 'studies')} without a frontal chest image (CR or "
                   "DX, PA or AP) cannot be read: "
                   + "; ".join(f"{patient_of(r.study)} on {shown_date(r.study.study_date)}"
                               for r in empty) + ".")
    if not readable:
        return
    every = st.checkbox(f"All {wording.plural(len(readable), 'study', 'studies')} with frontal images",
                        key="pacs_all")
    chosen_uids = list(readable) if every else st.multiselect(
        "Studies to read", list(readable), key="pacs_chosen",
        format_func=lambda uid: study_label(readable[uid]))
    chosen = [readable[uid] for uid in chosen_uids if uid in readable]
    n_images = sum(len(r.images) for r in chosen)
    too_many = n_images > config.PACS_MAX_IMAGES
    if too_many:
        st.warning(f"The selection holds {n_images} images; pneumo retrieves at most "
                   f"{config.PACS_MAX_IMAGES} at once. Choose fewer studies, and read the others "
                   "next.", icon=":material/warning:")
    if st.button(f"Read selected ({wording.plural(n_images, 'image')})", key="pacs_read",
                 type="primary", disabled=not chosen or too_many, icon=":material/radiology:"):
        read_studies(settings, chosen)
    done = st.session_state.get(READ_KEY)
    if done:
        _show_outcome(done)
        if done["lines"]:
            st.page_link("pages/read_xrays.py", label="Open the cards and worklist on Read X-rays",
                         icon=":material/radiology:")


def read_studies(settings: pacs.PacsSettings, rows: list[StudyRow]) -> None:
    """Retrieve the studies' frontal images (one audit record per study, first) and read them
    through the uploads' path; what happened goes to ``READ_KEY``."""
    client = pacs.PacsClient(settings)
    items: list[tuple[ui.PacsImage, bytes]] = []
    errors: list[str] = []
    for row in rows:
        if not _record(audit.PACS_RETRIEVE, {"study_instance_uid": row.study.study_instance_uid}):
            return
    wanted = [(row, number, ref) for row in rows
              for number, ref in enumerate(row.images, start=1)]
    with st.spinner(f"Retrieving {wording.plural(len(wanted), 'image')} from the PACS..."):
        refused: set[str] = set()  # studies with an image the PACS refused: said once each
        for (row, number, ref), data in zip(wanted, client.retrieve_all([w[2] for w in wanted])):
            if isinstance(data, pacs.PacsRefused):  # this image; the next may be fine
                if row.study.study_instance_uid not in refused:
                    refused.add(row.study.study_instance_uid)
                    errors.append(f"{patient_of(row.study)} on "
                                  f"{shown_date(row.study.study_date)}: {data}")
            elif isinstance(data, pacs.PacsError):  # the server: the rest would fail the same way
                errors.append(str(data))
                break
            else:
                items.append((ui.PacsImage(image_label(row.study, number), ref,
                                           pacs.header_of(data)), data))
    studies = len({image.ref.study_instance_uid for image, _ in items})
    readings = ui.add_pacs_readings(items, ui.segmenter(), ui.quality_checker()) if items else []
    del items
    lines = []
    if readings:
        unread = sum(1 for r in readings if not r.ok)
        lines.append(f"Read {wording.plural(len(readings), 'image')} from "
                     f"{wording.plural(studies, 'study', 'studies')}"
                     + (f" ({unread} could not be read)" if unread else "")
                     + ": their cards and worklist rows are on Read X-rays, named by patient, "
                       "study date and accession number.")
    st.session_state[READ_KEY] = {"lines": lines, "errors": errors}


def readings_to_send() -> list:
    """The shown PACS images with the reading the clinician sees as the result: the corrected
    copy's for a film whose correction was read (as in the worklist and its CSV), else its own."""
    return [(image, ui.corrected_reading(reading) or reading)
            for image, reading in ui.pacs_readings()]


def send_section(settings: pacs.PacsSettings) -> None:
    found = readings_to_send()
    if not found:
        return
    st.subheader("Send results to PACS")
    threshold = department_threshold()
    own = ui.current_threshold()
    origin = ("the department's default" if ui.department_threshold() is not None
              else "the recommended threshold, no department default being set")
    st.caption(
        f"Stores, in each image's study, a DICOM structured report (probability, trust state and "
        f"its reason, the decision at the department's threshold, the calibration, the model; "
        f"\"not for diagnosis\") and, for a trusted reading at or above the threshold, a "
        f"labelled heat-map image. The decision is at **{threshold:.3f}** ({origin})"
        + (f", not your slider's {own:.3f}" if abs(own - threshold) >= 5e-4 else "")
        + ". A report sent again supersedes the earlier one.")
    import pandas as pd

    st.dataframe(pd.DataFrame([{
        "Image": image.label,
        "P(pneumonia)": wording.probability_text(r.probability) if r.ok else "",
        "Trust": trust_states.LABELS.get(r.trust.state, r.trust.state) if r.ok else "not read",
        f"Decision at {threshold:.3f}": decision_of(r, threshold) if r.ok else "",
    } for image, r in found]), hide_index=True, width="stretch")
    if st.button(f"Send results to PACS ({wording.plural(sum(r.ok for _, r in found), 'image')})",
                 key="pacs_send", icon=":material/cloud_upload:",
                 disabled=not any(r.ok for _, r in found)):
        send_results(settings, found, threshold)
    done = st.session_state.get(SENT_KEY)
    if done:
        _show_outcome(done)
        if done["table"]:
            st.dataframe(pd.DataFrame(done["table"]), hide_index=True, width="stretch")


def send_results(settings: pacs.PacsSettings, found, threshold: float) -> None:
    """Store each read image's results (:class:`pneumo.reading.pacs_results.Sender`, as the
    batch command does), one audit record per store; what happened goes to ``SENT_KEY``."""
    actor = access.current().actor
    audit_errors: list[str] = []

    def record(new: dict) -> None:
        try:
            ui.audit_store().record(actor, audit.PACS_SEND, new=new)
        except audit.AuditError as err:
            audit_errors.append(f"{err} (The results were stored in the PACS.)")
            raise

    sender = Sender(pacs.PacsClient(settings), threshold, ui.site_name(), record=record)
    table, errors = [], []
    with st.spinner("Storing the results in the PACS..."):
        for image, reading in found:
            if not reading.ok:
                table.append({"Image": image.label, "Stored": "nothing: not read"})
                continue
            try:
                what = sender.send(image.header, reading)
            except audit.AuditError:
                errors += audit_errors
                break
            except pacs.PacsRefused as err:
                table.append({"Image": image.label, "Stored": f"nothing: {err}"})
                continue
            except pacs.PacsError as err:  # the server: every other image would fail the same
                errors.append(f"{err} Nothing more was stored.")
                break
            table.append({"Image": image.label, "Stored": "report and heat map" if what == SR_SC
                          else "report"})
    reports = sum(row["Stored"].startswith("report") for row in table)
    maps = sum(row["Stored"] == "report and heat map" for row in table)
    lines = [f"Stored {wording.plural(reports, 'report')} (DICOM SR) and "
             f"{wording.plural(maps, 'heat map')} (Secondary Capture) in the PACS, each in its "
             f"image's study, at threshold {threshold:.3f}."] if reports else []
    st.session_state[SENT_KEY] = {"lines": lines, "errors": errors, "table": table}


def _show_outcome(done: dict) -> None:
    """What a read or a send did: each error in its own box, then what went well."""
    for line in done["errors"]:
        st.error(line, icon=":material/error:")
    if done["lines"]:
        st.success("\n\n".join(done["lines"]), icon=":material/check_circle:")
