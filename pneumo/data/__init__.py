"""Data sets on disk (the Kaggle chest_xray split, the lung-mask set) and the training
augmentation.
"""
