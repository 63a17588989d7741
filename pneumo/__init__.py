"""pneumo: pneumonia flagging on pediatric chest X-rays (EfficientNet-Lite0, Grad-CAM)."""

import sys

# pneumo sends nothing anywhere: OpenVINO's usage telemetry is made unimportable before OpenVINO
# can be imported (it then uses its own no-op stub). See pneumo.models.runtime.block_telemetry.
sys.modules.setdefault("openvino_telemetry", None)

__version__ = "0.1.0"
