"""pneumo: entry point. ``streamlit run streamlit_app.py``."""

import streamlit as st

from pneumo.app import ui

st.set_page_config(page_title="pneumo", page_icon=":material/radiology:", layout="wide")
ui.explainer()  # once per server: starts loading and warming the model in the background

pages = [
    st.Page("pages/read_xrays.py", title="Read X-rays", icon=":material/radiology:", default=True),
    st.Page("pages/threshold_explorer.py", title="Threshold explorer", icon=":material/tune:"),
    st.Page("pages/model_card.py", title="Model card", icon=":material/description:"),
]
ui.threshold_slider()
ui.intended_use_notice()
st.navigation(pages).run()
