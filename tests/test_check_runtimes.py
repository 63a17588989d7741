"""The reading checks' networks (lung fields, image quality) on OpenVINO: equal to Keras (f32),
converted once from the .keras files and cached by SHA-256 beside the classifier's runtime model,
Keras when asked for or when OpenVINO is missing; and a server process that finds every runtime
model cached reads an X-ray without importing Keras or TensorFlow (Streamlit calls
``keras.backend.clear_session()`` after every script run whenever keras is imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from pneumo import config

pytest.importorskip("openvino", reason="openvino not installed (Keras only)")

LUNGS = config.weights_path(config.LUNG_MODEL_FILE)
QUALITY = config.weights_path(config.QUALITY_MODEL_FILE)


def _real_xrays(shared_data, n: int = 12) -> np.ndarray:
    from pneumo.io.images import load_image

    files = sorted((shared_data / "test").glob("*/*.jpeg"))[:: max(1, 624 // n)][:n]
    return np.stack([load_image(f.read_bytes()) for f in files])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime-cache")


def test_lung_segmenter_on_openvino_equals_keras_on_real_xrays(shared_data, cache):
    if not LUNGS.exists():
        pytest.skip(f"no lung-field model at {LUNGS}")
    from pneumo.models.lungs import LungSegmenter

    fast = LungSegmenter.load(LUNGS, runtime="auto", cache_dir=cache)
    reference = LungSegmenter.load(LUNGS, runtime="keras")
    assert (fast.runtime, reference.runtime) == ("openvino", "keras")
    assert fast.network.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    x = _real_xrays(shared_data)
    ours, theirs = fast.probabilities(x, batch_size=5), reference.probabilities(x)
    assert ours.shape == theirs.shape == (len(x), config.IMAGE_SIZE, config.IMAGE_SIZE)
    # 1.2e-5 measured: the area resize as two matrix products sums in another order (2.7e-6 in
    # Keras alone), the rest is OpenVINO's f32 convolutions against TensorFlow's
    np.testing.assert_allclose(ours, theirs, atol=3e-5)
    for mine, keras_fields in zip(fast.fields(x), reference.fields(x)):
        assert np.mean(mine.mask != keras_fields.mask) <= 1e-4  # a pixel at exactly 0.5 may flip
        assert mine.components == keras_fields.components and mine.problem == keras_fields.problem
    alone = fast.probabilities(x[3])  # one image alone: what it got in a batch
    np.testing.assert_allclose(alone[0], ours[3], atol=1e-6)


def test_quality_network_on_openvino_equals_keras_on_real_and_turned_xrays(shared_data, cache):
    if not QUALITY.exists():
        pytest.skip(f"no quality network at {QUALITY}")
    from pneumo.models import quality

    fast = quality.QualityChecker.load(QUALITY.parent, runtime="auto", cache_dir=cache)
    reference = quality.QualityChecker.load(QUALITY.parent, runtime="keras")
    assert (fast.runtime, reference.runtime) == ("openvino", "keras")
    assert fast.thresholds == reference.thresholds
    x = _real_xrays(shared_data, 6)
    x = np.concatenate([x, *(np.stack([quality.apply(i, code) for i in x[:2]])
                             for code in quality.CORRECTABLE)])
    orientation, inverted = fast.predict(x, batch_size=7)
    ref_orientation, ref_inverted = reference.predict(x)
    np.testing.assert_allclose(orientation, ref_orientation, atol=1e-5)
    np.testing.assert_allclose(inverted, ref_inverted, atol=1e-5)
    sizes = [(1000, 1200)] * len(x)
    assert ([r.codes for r in fast.check(x, sizes)]
            == [r.codes for r in reference.check(x, sizes)])


def test_check_networks_are_cached_by_sha256_apart_from_the_classifier(tmp_path, monkeypatch):
    """Built once under their own keys (kept apart from the classifier's when pruning), reused
    while the file is the same, rebuilt when the cached copy is damaged."""
    if not (LUNGS.exists() and QUALITY.exists()):
        pytest.skip("no lung-field or quality network in weights/")
    from pneumo.models import runtime
    from pneumo.models.lungs import LungSegmenter
    from pneumo.models.quality import QualityChecker

    monkeypatch.setattr(config, "RUNTIME_CACHE_KEEP", 1)
    (tmp_path / runtime.cache_key("0" * 64)).mkdir()  # a classifier's entry: never pruned by these
    (tmp_path / runtime.cache_key("0" * 64) / runtime.SOURCE_FILE).write_text("{}")
    seg = LungSegmenter.load(LUNGS, cache_dir=tmp_path)
    checker = QualityChecker.load(QUALITY.parent, cache_dir=tmp_path)
    lungs_key = runtime.cache_key(runtime.file_sha256(LUNGS), kind=runtime.LUNGS)
    quality_key = runtime.cache_key(runtime.file_sha256(QUALITY), kind=runtime.QUALITY)
    assert lungs_key.startswith("lungs-openvino-") and quality_key.startswith("quality-openvino-")
    assert seg.network.folder == tmp_path / lungs_key
    assert checker.network.folder == tmp_path / quality_key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [runtime.cache_key("0" * 64), lungs_key, quality_key])
    record = json.loads((tmp_path / lungs_key / runtime.SOURCE_FILE).read_text())
    assert record["kind"] == "lungs" and record["sha256"] == runtime.file_sha256(LUNGS)

    stamp = (tmp_path / lungs_key / runtime.MODEL_XML).stat().st_mtime_ns
    again = LungSegmenter.load(LUNGS, cache_dir=tmp_path)
    assert (again.network.folder / runtime.MODEL_XML).stat().st_mtime_ns == stamp  # reused
    (again.network.folder / runtime.MODEL_XML).write_text("broken")
    fixed = LungSegmenter.load(LUNGS, cache_dir=tmp_path)  # a damaged cache is rebuilt
    assert fixed.runtime == "openvino"
    x = np.full((1, config.IMAGE_SIZE, config.IMAGE_SIZE, 3), 120, np.uint8)
    np.testing.assert_allclose(fixed.probabilities(x), seg.probabilities(x), atol=1e-6)


def test_without_openvino_the_checks_run_on_keras(monkeypatch, tmp_path):
    if not (LUNGS.exists() and QUALITY.exists()):
        pytest.skip("no lung-field or quality network in weights/")
    from pneumo.models.lungs import LungSegmenter
    from pneumo.models.quality import QualityChecker

    monkeypatch.setitem(sys.modules, "openvino", None)  # import -> ImportError
    assert LungSegmenter.load(LUNGS, cache_dir=tmp_path).runtime == "keras"
    assert QualityChecker.load(QUALITY.parent, cache_dir=tmp_path).runtime == "keras"
    assert list(tmp_path.iterdir()) == []


_APP_MODELS = """
import json, sys
import numpy as np
from pneumo import config
from pneumo.app import ui
from pneumo.io.images import load_image
from pneumo.reading import reader

seg, checker = ui.segmenter(), ui.quality_checker()
image = (np.random.default_rng(0).uniform(40, 220, (400, 400))).astype("uint8")
import cv2
ok, png = cv2.imencode(".png", image)
readings = reader.read_batch([("x.png", png.tobytes())], ui.explainer(), ood_check=ui.ood_detector(),
                             segmenter=seg, quality_checker=checker, scope_check=ui.scope_check())
print(json.dumps({"keras": "keras" in sys.modules, "tensorflow": "tensorflow" in sys.modules,
                  "lungs": getattr(seg, "runtime", None), "quality": checker.runtime,
                  "read": readings[0].error is None, "lung_fields": readings[0].lungs is not None}))
sys.stdout.flush()
ui.explainer().close()
"""


def test_the_app_reads_without_importing_keras_once_its_runtime_models_are_cached(
        tmp_path, bundled_model_dir):
    if not (LUNGS.exists() and QUALITY.exists()):
        pytest.skip("no lung-field or quality network in weights/")
    env = {**os.environ, "PNEUMO_CACHE_DIR": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PNEUMO_RUNTIME": "auto"}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", _APP_MODELS], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()  # builds the three runtime models (this one needs Keras)
    assert first["read"] and first["lung_fields"]
    assert (first["lungs"], first["quality"]) == ("openvino", "openvino")
    second = run()  # a fresh server process with the cache in place
    assert second == {**first, "keras": False, "tensorflow": False}
