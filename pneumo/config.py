"""Every number and path pneumo depends on, in one place."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = Path(os.environ.get("PNEUMO_WEIGHTS_DIR", PROJECT_ROOT / "weights"))

# Files in WEIGHTS_DIR.
MODEL_FILE = "pneumo.keras"
HISTORY_FILE = "history.csv"
TRAINING_FILE = "training.json"
TEST_PREDICTIONS_FILE = "test_predictions.csv"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
METRICS_FILE = "metrics.json"
IMAGENET_NOTOP_FILE = Path("imagenet") / "efficientnet_lite0_notop.weights.h5"

# Where the shared copy of the Kaggle data set lives beside a checkout.
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"

# Model input.
IMAGE_SIZE = 224  # pixels, square
CHANNELS = 3
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
POSITIVE_CLASS = "PNEUMONIA"

# Keras layer names the rest of the code refers to.
BACKBONE_NAME = "efficientnet_lite0"
CAM_LAYER = "top_activation"  # last convolutional feature map (7x7x1280)
LOGIT_LAYER = "logit"
CALIBRATION_LAYER = "calibration"

# Data split and training.
SEED = 1337
VAL_FRACTION = 0.15  # of train patients, per class
BATCH_SIZE = 32
HEAD_EPOCHS = 30  # on cached features: seconds each
FINETUNE_EPOCHS = 10
HEAD_LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = 2e-4
EARLY_STOPPING_PATIENCE = 3
DROPOUT_RATE = 0.3

# Evaluation.
BOOTSTRAP_SAMPLES = 2000
HIGH_SENSITIVITY_TARGET = 0.95
CALIBRATION_BINS = 10
DEFAULT_THRESHOLD = 0.5

# Input safety.
MAX_UPLOAD_MB = 50
MAX_IMAGE_PIXELS = 80_000_000  # a larger decoded image is refused as a likely decompression bomb
MIN_IMAGE_SIDE = 64  # pixels
MAX_ASPECT_RATIO = 4.0

# Published figures on the same official test split (624 images).
PUBLISHED_REFERENCE = [
    {"source": "Kermany et al. 2018 (InceptionV3)", "auc": 0.968, "accuracy": 0.928,
     "sensitivity": 0.932, "specificity": 0.901},
    {"source": "MedMNIST v2 ResNet-50 (224 px)", "auc": 0.962, "accuracy": 0.884,
     "sensitivity": None, "specificity": None},
]


def weights_path(name: str | Path) -> Path:
    """Path of a file in the weights folder."""
    return WEIGHTS_DIR / name
