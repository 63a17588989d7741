"""Audit (administrators): who did what, when, with what result; filters and CSV export."""

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import streamlit as st

from pneumo import audit
from pneumo.app import ui

ui.page_setup()  # a page opened directly still gets the app's navigation, sidebar and sign-in
ui.require_admin()
st.title("Audit")
store = ui.audit_store()
settings = ui.audit_settings()
st.caption(f"One record per action when it happens, in {audit.shown_url(store.url)}; kept "
           f"{settings.retention_days} days, removed only by `python -m pneumo.audit --purge` "
           "(an administrator's command; the app cannot change or delete a record). A reading "
           "is recorded by the file's SHA-256, never its name or pixels. Times are UTC.")

today = datetime.now(UTC).date()
left, middle, right = st.columns([1.4, 1.3, 1])
dates = left.date_input("Dates (UTC)", (today - timedelta(days=7), today), max_value=today,
                        key="audit_dates")
subjects = store.subjects()
who = middle.selectbox("User", ["Everyone", *subjects], key="audit_user")
action = right.selectbox("Action", ["All", *audit.ACTIONS], key="audit_action")
first, last = (dates if isinstance(dates, tuple | list) and len(dates) == 2
               else (dates[0] if isinstance(dates, tuple | list) else dates,) * 2)
if not isinstance(first, date):
    st.info("Choose a date range.")
    st.stop()
rows = store.records(since=datetime.combine(first, time(), UTC),
                     until=datetime.combine(last + timedelta(days=1), time(), UTC),
                     subject=None if who == "Everyone" else who,
                     action=None if action == "All" else action)
st.markdown(f"**{len(rows):,} record(s)**")
if rows:
    st.dataframe(pd.DataFrame(rows, columns=audit.COLUMNS), hide_index=True, width="stretch")
st.download_button("Download these records (CSV)", audit.to_csv(rows), "pneumo_audit.csv",
                   "text/csv", on_click="ignore", icon=":material/download:", key="audit_csv")
