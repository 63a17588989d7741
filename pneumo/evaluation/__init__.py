"""Numbers about the model: metrics and intervals, robustness figures, and the records in
``weights/`` (:mod:`pneumo.evaluation.artifacts`).
"""
