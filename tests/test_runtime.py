"""The OpenVINO runtime: equal to Keras (f32), built from the .keras file and cached by its SHA-256,
Keras when OpenVINO is missing, no telemetry; the server's queue over it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import ROOT, synthetic_xray

from pneumo import config

IMAGENET = config.weights_path(config.IMAGENET_NOTOP_FILE)


def _ov():
    return pytest.importorskip("openvino", reason="openvino not installed (Keras fallback only)")


_MODULES = {"openvino": "openvino", "litert": "ai_edge_litert.interpreter"}


def _real_xrays(shared_data, n: int = 12) -> np.ndarray:
    from pneumo.io.images import load_image

    files = sorted((shared_data / "test").glob("*/*.jpeg"))[:: max(1, 624 // n)][:n]
    return np.stack([load_image(f.read_bytes()) for f in files]).astype("float32")


@pytest.mark.parametrize("backend", ["openvino", "litert"])
def test_fast_runtime_equals_keras_on_real_xrays(backend, shared_data, bundled_model_dir, tmp_path):
    pytest.importorskip(_MODULES[backend], reason=f"{backend} not installed")
    from pneumo.models.classifier import load_model
    from pneumo.models.explain import METHODS, CamExplainer
    from pneumo.models.runtime import load_explainer

    model_path = bundled_model_dir / config.MODEL_FILE
    fast = load_explainer(model_path, runtime=backend, cache_dir=tmp_path)
    assert fast.runtime == backend
    if backend == "openvino":
        assert fast.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    model = load_model(model_path)
    x = _real_xrays(shared_data)
    ours = fast.explain(x, batch_size=5)
    reference = CamExplainer(model).explain(x)
    np.testing.assert_allclose([e.probability for e in ours],
                               model.predict(x, verbose=0).ravel(), atol=1e-5)
    np.testing.assert_allclose(np.stack([e.features for e in ours]),
                               np.stack([e.features for e in reference]), atol=1e-4)
    for method in METHODS:  # the Keras path, which test_model.py holds to tf-keras-vis (1e-5)
        np.testing.assert_allclose(np.stack([e.cams[method] for e in ours]),
                                   np.stack([e.cams[method] for e in reference]), atol=1e-4)
    # one image at a time gives exactly what the batch gave (the queue may batch anything)
    for image, batched in zip(x[:3], ours):
        alone = fast.explain(image)[0]
        assert alone.probability == batched.probability
    if backend == "openvino":  # batches run on the throughput streams, chunk by chunk: the same bits
        singles = [fast.forward(image[None]) for image in x]
        for n in (2, 3, 7, len(x)):
            prob, logit, feats = fast.forward(x[:n])
            for i in range(n):
                assert prob[i] == singles[i][0][0] and logit[i] == singles[i][1][0]
                np.testing.assert_array_equal(feats[i], singles[i][2][0])
        for method in METHODS:
            np.testing.assert_array_equal(alone.cams[method], batched.cams[method])


def test_runtime_model_is_built_from_the_keras_file_and_rebuilt_when_it_changes(tmp_path,
                                                                                 monkeypatch):
    """Any model of this architecture: cached under its SHA-256, reused while the file is the
    same, rebuilt (and, beyond RUNTIME_CACHE_KEEP, the old copy dropped) when it is replaced."""
    _ov()
    from pneumo.models import runtime
    from pneumo.models.classifier import build_classifier, set_calibration

    monkeypatch.setattr(config, "RUNTIME_CACHE_KEEP", 1)
    model = build_classifier(IMAGENET)
    model_path, cache = tmp_path / "m.keras", tmp_path / "cache"
    x = np.stack([np.repeat(synthetic_xray(224, i)[..., None], 3, -1) for i in range(3)])
    x = x.astype("float32")
    probabilities = []
    for scale, bias in ((1.0, 0.0), (2.5, -1.0)):
        set_calibration(model, scale, bias)
        model.save(model_path)
        fast = runtime.load_explainer(model_path, runtime="openvino", cache_dir=cache)
        sha = runtime.file_sha256(model_path)
        assert fast.folder == cache / runtime.cache_key(sha)
        assert [p.name for p in cache.iterdir()] == [fast.folder.name]  # the old one is gone
        got = [e.probability for e in fast.explain(x)]
        np.testing.assert_allclose(got, model.predict(x, verbose=0).ravel(), atol=1e-5)
        probabilities.append(got)
    assert not np.allclose(probabilities[0], probabilities[1], atol=1e-3)

    stamp = (fast.folder / runtime.MODEL_XML).stat().st_mtime_ns
    again = runtime.load_explainer(model_path, runtime="openvino", cache_dir=cache)
    assert (again.folder / runtime.MODEL_XML).stat().st_mtime_ns == stamp  # reused, not rebuilt
    (again.folder / runtime.MODEL_XML).write_text("broken")  # a damaged cache is rebuilt
    fixed = runtime.load_explainer(model_path, runtime="openvino", cache_dir=cache)
    np.testing.assert_allclose([e.probability for e in fixed.explain(x)], probabilities[1],
                               atol=1e-6)


def test_without_openvino_the_keras_runtime_is_used(monkeypatch, tmp_path, bundled_model_dir):
    from pneumo.models import runtime
    from pneumo.models.explain import CamExplainer

    for name in ("openvino", "ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    assert not runtime.available("openvino") and not runtime.available("litert")
    model_path = bundled_model_dir / config.MODEL_FILE
    assert isinstance(runtime.load_explainer(model_path, cache_dir=tmp_path), CamExplainer)
    with pytest.raises(ImportError, match="openvino"):
        runtime.load_explainer(model_path, runtime="openvino", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_says_how_to_train_one(tmp_path):
    from pneumo.models.runtime import load_explainer

    with pytest.raises(FileNotFoundError, match="pneumo.train"):
        load_explainer(tmp_path / "missing.keras", cache_dir=tmp_path)


def test_the_runtime_cli_offers_what_load_explainer_takes_and_says_when_there_is_no_model(
        tmp_path, capsys):
    from pneumo.cli import runtime as cli
    from pneumo.models.runtime import RUNTIMES

    with pytest.raises(SystemExit):
        cli.main(["--runtime", "tensorrt"])
    assert "choose from 'auto', 'keras'" in capsys.readouterr().err
    assert set(RUNTIMES) == {"auto", "keras", "openvino", "litert"}
    assert cli.main(["--model", str(tmp_path / "missing.keras"), "--runtime", "keras"]) == 1
    assert "pneumo.train" in capsys.readouterr().err


def test_openvino_telemetry_is_off_and_sends_nothing(tmp_path):
    """In a fresh process (HOME in tmp, not marked as CI, outbound connections refused and
    logged): importing pneumo then OpenVINO leaves OpenVINO on its no-op telemetry stub, writes
    no consent or client-id file and tries no connection."""
    _ov()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    net_log = tmp_path / "net.log"
    env.update(HOME=str(tmp_path), PNEUMO_NET_LOG=str(net_log),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "netguard"), str(ROOT)]))
    code = ("import sys, time, pneumo.models.runtime, openvino\n"
            "from openvino.tools.ovc import telemetry_utils\n"
            "assert sys.modules['openvino_telemetry'] is None\n"
            "print(telemetry_utils.tm.__name__)\n"
            "telemetry_utils.init_ovc_telemetry('pneumo-test').send_event('a', 'b', 'c')\n"
            "time.sleep(1)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("telemetry_stub")
    assert not (tmp_path / "intel").exists()
    assert not net_log.exists()


def test_the_queue_over_openvino_gives_single_session_results(shared_data, bundled_model_dir,
                                                              tmp_path):
    _ov()
    from pneumo.models.runtime import load_explainer
    from pneumo.models.serving import InferenceQueue

    model_path = bundled_model_dir / config.MODEL_FILE
    x = _real_xrays(shared_data, 8)
    alone = load_explainer(model_path, runtime="openvino", cache_dir=tmp_path).explain(x)
    q = InferenceQueue(lambda: load_explainer(model_path, runtime="openvino", cache_dir=tmp_path),
                       request_images=2)
    assert q.wait_ready(120) and q.load_error is None and q.runtime == "openvino"
    results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, q.explain(x[i::4])))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        assert [e.probability for e in results[i]] == [e.probability for e in alone[i::4]]
        for got, want in zip(results[i], alone[i::4]):
            np.testing.assert_array_equal(got.cams["Grad-CAM++"], want.cams["Grad-CAM++"])


def test_openvino_uint8_input_gives_the_float_input_result_to_the_bit(shared_data, bundled_model_dir,
                                                                       tmp_path):
    """uint8 pixels go in as uint8 (converted inside the model): the same result to the bit."""
    _ov()
    from pneumo.models.runtime import load_explainer

    fast = load_explainer(bundled_model_dir / config.MODEL_FILE, runtime="openvino",
                          cache_dir=tmp_path)
    pixels = _real_xrays(shared_data, 6).astype(np.uint8)
    for batch in (pixels, pixels[:1]):
        as_u8 = fast.forward(batch)
        as_f32 = fast.forward(batch.astype("float32"))
        for a, b in zip(as_u8, as_f32):
            np.testing.assert_array_equal(a, b)
    assert fast.compiled.input(0).get_element_type().to_string() == "u8"


def test_the_runtime_cli_also_builds_the_lung_and_quality_networks(monkeypatch, capsys):
    """``python -m pneumo.runtime`` on the bundled model builds the helpers' cached runtimes too,
    so a replica's first start converts nothing (issue #22)."""
    from pneumo.cli import runtime as cli
    from pneumo.models import lungs, quality

    built = []

    class Fake:
        def fields(self, images):
            built.append(("lungs", images.shape))

        def check(self, images, sizes):
            built.append(("quality", images.shape))

    monkeypatch.setattr(lungs.LungSegmenter, "load", classmethod(lambda cls, *a, **k: Fake()))
    monkeypatch.setattr(quality.QualityChecker, "load", classmethod(lambda cls, *a, **k: Fake()))
    assert cli.main(["--runtime", "keras"]) == 0
    assert [name for name, _ in built] == ["lungs", "quality"]
    out = capsys.readouterr().out
    assert "lungs.keras ready" in out and "quality.keras ready" in out
