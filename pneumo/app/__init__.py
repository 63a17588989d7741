"""Streamlit helpers and charts (the only package that imports Streamlit).
"""
