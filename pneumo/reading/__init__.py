"""One file in, one result out: the reading pipeline, its wording, and a site's own calibration.
"""
