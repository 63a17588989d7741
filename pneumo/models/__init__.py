"""The networks and what runs them: the classifier, lung fields, image quality, heat maps, the fast
runtime, the inference queue and the OOD check.
"""
