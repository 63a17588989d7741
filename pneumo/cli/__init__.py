"""Command-line programs (``python -m pneumo.<verb>``); nothing imports them.
"""
