"""pneumo: entry point. ``streamlit run streamlit_app.py``.

Navigation, shared threshold, intended-use note and model warm-up: :func:`pneumo.app.ui.run_app`
(every page calls :func:`pneumo.app.ui.page_setup` first, so a page opened directly gets them too).
"""

from pneumo.app import ui

ui.run_app()
