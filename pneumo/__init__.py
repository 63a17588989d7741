"""pneumo: pneumonia flagging on pediatric chest X-rays (EfficientNet-Lite0, Grad-CAM)."""

__version__ = "0.1.0"
