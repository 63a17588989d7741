"""From PACS: search the PACS, read studies like uploads, send results back (signed-in users)."""

import streamlit as st

from pneumo.app import pacs_ui, ui

ui.page_setup()  # a page opened directly still gets the app's navigation, sidebar and sign-in
st.title("From PACS")
pacs_ui.page()
