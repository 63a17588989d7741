"""Shared fixtures: paths, the shared data set (skip when absent), test-made X-ray-like images."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The audit trail (pneumo.audit) of the app and command lines run by the tests goes to a file of
# this test session, never to the user's ~/.local/share/pneumo (children inherit the variable).
os.environ.setdefault("PNEUMO_AUDIT_URL", "sqlite:///" + os.path.join(
    __import__("tempfile").mkdtemp(prefix="pneumo-test-audit-"), "audit.sqlite3"))

from pneumo import config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def synthetic_xray(size: int = 256, seed: int = 0) -> np.ndarray:
    """A grey, chest-like picture (two dark lung fields in a bright body), uint8 HxW."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 170 - 60 * ((xx - 0.5) ** 2 + (yy - 0.55) ** 2)
    lungs = np.exp(-(((xx - 0.32) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    lungs += np.exp(-(((xx - 0.68) / 0.12) ** 2 + ((yy - 0.5) / 0.25) ** 2))
    img = body - 110 * lungs + rng.normal(0, 6, (size, size))
    return np.clip(img, 0, 255).astype("uint8")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data/chest_xray, or skip the test with a reason."""
    if not (config.SHARED_DATA_DIR / "test").is_dir():
        pytest.skip(f"shared data set not found at {config.SHARED_DATA_DIR}")
    return config.SHARED_DATA_DIR


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The weights folder with a trained model, or skip."""
    if not config.weights_path(config.MODEL_FILE).exists():
        pytest.skip(f"no trained model at {config.weights_path(config.MODEL_FILE)}")
    return config.WEIGHTS_DIR


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    """A tiny Kaggle-layout folder of test-made images (full-size, like a user's download)."""
    root = tmp_path / "chest_xray"
    names = {
        "NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "IM-0003-0001.jpeg",
                   "NORMAL2-IM-0010-0001.jpeg", "NORMAL2-IM-0011-0001.jpeg", "IM-0005-0001.jpeg"],
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person2_virus_3.jpeg",
                      "person3_bacteria_4.jpeg", "person4_virus_5.jpeg", "person5_virus_6.jpeg"],
    }
    seed = 0
    for split in ("train", "val", "test"):
        for label, files in names.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for name in files:
                seed += 1
                img = synthetic_xray(300 + 7 * (seed % 5), seed)
                if label == "PNEUMONIA":
                    img = np.clip(img.astype(int) + 40, 0, 255).astype("uint8")
                (folder / name).write_bytes(jpeg_bytes(img))
    return root


@pytest.fixture(autouse=True)
def _no_site_calibration(tmp_path_factory, monkeypatch):
    """No test sees a site calibration file of this machine or of another test: the site folder
    is an empty temporary one of its own, unless a test points ``PNEUMO_SITE_DIR`` elsewhere.
    (One shared folder let a test that saved a site file calibrate every later test's app.)"""
    monkeypatch.setenv(config.SITE_DIR_ENV, str(tmp_path_factory.mktemp("no-site")))


def run_app():
    """The whole app in Streamlit's AppTest, run once, without an exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def explorer_caption_counts(at) -> tuple[int, int]:
    """(missed pneumonia, falsely flagged normal) from the Threshold explorer's confusion caption."""
    import re

    for c in at.caption:
        hit = re.search(r"(\d+) of \d+ pneumonia images missed, (\d+) of \d+ normal", c.value)
        if hit:
            return int(hit.group(1)), int(hit.group(2))
    raise AssertionError("confusion caption not found")
