"""Fast runtimes for the forward pass: OpenVINO (CPU plugin) or LiteRT (XNNPACK), both f32,
built from the Keras model.

Keras stays the training and reference path (:class:`pneumo.models.explain.CamExplainer`).
:func:`load_explainer` gives the fastest explainer this machine has: the first installed runtime
of :data:`AUTO_ORDER` (ordered by ``benchmarks/bench.py``'s measurement), else the Keras one. All
return the same things for a batch (probability, both heat maps, pooled features), computed
from one forward pass (:func:`pneumo.models.explain.explanations`); tests hold each runtime to Keras
(probability within 1e-5) and to tf-keras-vis (heat maps).

A runtime model is never edited or committed by hand. At first use it is converted from
``weights/pneumo.keras`` and kept in a cache folder (``config.RUNTIME_CACHE_DIR``) under a key
made of the ``.keras`` file's SHA-256, the runtime's version and :data:`FORMAT`; a replaced
``.keras`` file gets a new key, so its runtime model is rebuilt at the next load and the old one
removed. A process that finds the cached model does not import TensorFlow at all (cold start);
one that has not imported TensorFlow yet converts in a child process, so it stays without.

The two small networks of the reading's checks, the lung-field U-Net (``weights/lungs.keras``)
and the quality network (``weights/quality.keras``), go the same way through OpenVINO
(:func:`load_network`: :func:`convert_lungs`, :func:`convert_quality`; cached under
``lungs-openvino-...`` and ``quality-openvino-...``), so a server with every runtime model
cached never imports Keras or TensorFlow: Streamlit calls ``keras.backend.clear_session()``
after every script run whenever ``keras`` is imported. Keras stays their reference and
fallback (``PNEUMO_RUNTIME=keras``, OpenVINO missing, or a conversion that fails); tests hold
OpenVINO to Keras.

OpenVINO runs with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 units it would otherwise
pick bf16 and move probabilities by ~1e-3. LiteRT runs the f32 flatbuffer as converted.

OpenVINO's Python package sends usage telemetry on import unless told otherwise. pneumo turns it
off for the whole process before OpenVINO is first imported (``import pneumo`` does it;
:func:`block_telemetry` also handles a process that imported it earlier): the
``openvino_telemetry`` module is made unimportable, so OpenVINO falls back to its own no-op
stub, writes no consent or client-id file and sends nothing. LiteRT has no telemetry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.models.explain import ForwardExplainer, Head

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the conversion below changes: cached models of older formats are rebuilt
# (2: the head file carries an ensemble's member kernels and biases, pneumo.models.ensemble)
MODEL_XML = "model.xml"
LITERT_FILE = "model.tflite"
HEAD_FILE = "head.npz"
SOURCE_FILE = "source.json"
OUTPUTS = ("probability", "logit", "features")


def block_telemetry() -> None:
    """Make OpenVINO's usage telemetry impossible in this process (idempotent).

    Before OpenVINO is imported, ``openvino_telemetry`` is made unimportable (OpenVINO then uses
    its no-op stub). If OpenVINO was already imported with telemetry, its modules are pointed at
    the stub and the live telemetry object is told it has no consent.
    """
    telemetry = sys.modules.setdefault("openvino_telemetry", None)
    if telemetry is None:
        return
    try:  # imported before pneumo could stop it: switch it off where it is used
        import openvino.tools.ovc.telemetry_stub as stub

        for name in ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl",
                     "openvino.tools.ovc.utils", "openvino.tools.ovc.main"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "tm"):
                module.tm = stub
        instance = getattr(telemetry.Telemetry, "_SingletonMetaClass__single_instance", None)
        if instance is not None:
            instance.consent = False
    except Exception:  # nothing to switch off
        pass


block_telemetry()


_MODULES = {"openvino": "openvino", "litert": "ai_edge_litert.interpreter"}


def available(backend: str = "openvino") -> bool:
    """True when the backend's package can be imported."""
    import importlib

    try:
        importlib.import_module(_MODULES[backend])
    except ImportError:
        return False
    return True


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(backend: str) -> str:
    from importlib.metadata import version

    return version("openvino" if backend == "openvino" else "ai-edge-litert").split("-")[0]


CLASSIFIER, LUNGS, QUALITY = "classifier", "lungs", "quality"  # the networks with runtime models


def _prefix(backend: str, kind: str = CLASSIFIER) -> str:
    return backend if kind == CLASSIFIER else f"{kind}-{backend}"


def cache_key(sha256: str, backend: str = "openvino", kind: str = CLASSIFIER) -> str:
    """Folder name of the runtime model built from a ``.keras`` file with this SHA-256
    (``kind``: the classifier, or ``"lungs"`` / ``"quality"``, whose keys start with it)."""
    return f"{_prefix(backend, kind)}-{sha256[:32]}-v{_version(backend)}-f{FORMAT}"


def _outputs_model(model):
    import keras

    return keras.Model(model.input, [model.output, model.get_layer(config.LOGIT_LAYER).output,
                                     model.get_layer(config.CAM_LAYER).output])


def convert_litert(model, folder: Path) -> None:
    """Convert the Keras classifier to a LiteRT flatbuffer (f32) in ``folder``, via a SavedModel.

    Outputs as :func:`convert`, read by name through the signature runner.
    """
    import tensorflow as tf

    head = Head.of(model)
    saved = folder / "saved_model"
    _outputs_model(model).export(str(saved), format="tf_saved_model", verbose=False)
    (folder / LITERT_FILE).write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
    shutil.rmtree(saved)
    np.savez(folder / HEAD_FILE, **head.arrays())


def convert(model, folder: Path) -> None:
    """Convert the Keras classifier to an OpenVINO model (f32 weights) in ``folder``.

    Outputs, in order: calibrated probability (N, 1), logit (N, 1), last feature map
    (N, 7, 7, 1280; an ensemble's K members' side by side, K * 1280); the input is any batch of
    (224, 224, 3) float32 RGB 0-255. The head file holds what :class:`Head` needs.
    """
    import openvino as ov
    import tensorflow as tf

    head = Head.of(model)  # also checks that the head is the one the closed-form CAMs need
    outputs = _outputs_model(model)
    spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS], tf.float32)
    forward = tf.function(lambda x: outputs(x, training=False), input_signature=[spec])
    ov_model = ov.convert_model(forward.get_concrete_function())
    for output, name in zip(ov_model.outputs, OUTPUTS):
        output.get_tensor().set_names({name})
    ov.save_model(ov_model, folder / MODEL_XML, compress_to_fp16=False)
    np.savez(folder / HEAD_FILE, **head.arrays())


def build_cached(model_path: Path, sha256: str, cache_dir: Path, backend: str = "openvino",
                 kind: str = CLASSIFIER, load=None) -> Path:
    """The cached runtime model's folder for ``model_path``, converting it first if needed.

    Built in a temporary folder and renamed into place, so a reader never sees half a model and
    two processes building at once both end with one complete copy. Entries beyond the
    ``config.RUNTIME_CACHE_KEEP`` most recently used of the same kind and runtime are removed
    once a new one is in place (they belong to replaced ``.keras`` files). ``load``: how to
    load the Keras model from ``model_path`` (default: the classifier's loader).
    """
    folder = cache_dir / cache_key(sha256, backend, kind)
    if (folder / SOURCE_FILE).exists():
        try:
            os.utime(folder / SOURCE_FILE)  # recently used: kept when older entries are pruned
        except OSError:
            pass
        return folder
    if kind != CLASSIFIER and backend != "openvino":
        raise ValueError(f"no {backend} conversion for the {kind} network")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        if "tensorflow" in sys.modules:  # already here: converting costs nothing more
            convert_here(kind, backend, model_path, tmp, load)
        else:  # keep this process free of TensorFlow and Keras (a server's, see above)
            _convert_elsewhere(kind, backend, model_path, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"model": str(model_path), "sha256": sha256, "backend": backend, "kind": kind,
             "format": FORMAT}, indent=1) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process put it there first
            if not (folder / SOURCE_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(cache_dir, _prefix(backend, kind))
    log.info("built the %s model for %s in %s", backend, model_path.name, folder)
    return folder


_LOADERS = {CLASSIFIER: "pneumo.models.classifier:load_model",
            LUNGS: "pneumo.models.lungs:load_segmenter_model",
            QUALITY: "pneumo.models.quality:load_keras_model"}  # each kind's Keras loader


def convert_here(kind: str, backend: str, model_path: Path, folder: Path, load=None) -> None:
    """Convert the ``.keras`` file's network into ``folder``, in this process (imports Keras)."""
    if load is None:
        import importlib

        module, name = _LOADERS[kind].split(":")
        load = getattr(importlib.import_module(module), name)
    if kind == CLASSIFIER:
        converter = convert if backend == "openvino" else convert_litert
    else:
        converter = {LUNGS: convert_lungs, QUALITY: convert_quality}[kind]
    converter(load(model_path), folder)


def _convert_elsewhere(kind: str, backend: str, model_path: Path, folder: Path) -> None:
    """:func:`convert_here` in a child process, so this one never imports TensorFlow or Keras:
    Streamlit calls ``keras.backend.clear_session()`` after every script run of a server that
    has imported keras. Raises RuntimeError with the child's last words when it fails."""
    import subprocess

    root = Path(__file__).resolve().parents[2]  # pneumo's folder's parent: importable from there
    code = ("import sys; from pathlib import Path; from pneumo.models import runtime; "
            "runtime.convert_here(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))")
    done = subprocess.run([sys.executable, "-c", code, kind, backend, str(model_path), str(folder)],
                          cwd=root, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"converting {model_path.name} to {backend} failed: {last}")


def _prune(cache_dir: Path, backend: str) -> None:
    """Keep the most recently used entries whose names start with ``backend`` + "-" (for the
    checks' networks, ``"lungs-openvino"`` etc.: a classifier's ``openvino-`` never matches them)."""
    def used(folder: Path) -> float:
        try:
            return (folder / SOURCE_FILE).stat().st_mtime
        except OSError:
            return 0.0

    entries = sorted((f for f in cache_dir.glob(f"{backend}-*") if f.is_dir()), key=used,
                     reverse=True)
    for old in entries[config.RUNTIME_CACHE_KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def area_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): TensorFlow's area resize along one axis as a matrix, made by the
    op itself on unit vectors (area resizing is separable: out = M @ image @ M.T per channel)."""
    import tensorflow as tf

    eye = np.eye(size_in, dtype="float32")[:, :, None, None]  # size_in images, one pixel wide
    out = tf.image.resize(eye, (size_out, 1), method="area").numpy()[:, :, 0, 0]
    return np.ascontiguousarray(out.T)


def convert_lungs(model, folder: Path) -> None:
    """Convert the lung-field U-Net to an OpenVINO model (f32 weights) in ``folder``.

    OpenVINO cannot convert TensorFlow's area resize (the model's first layer, 224 -> the work
    size), so it becomes two matrix products with :func:`area_resize_matrix` (the same
    weights; checked against the layer here to 1e-5 before anything is saved); the rest of
    the network is the Keras model's own layers from there on. Input: any batch of
    (224, 224, 3) float32 RGB 0-255; output "lung_probability" (N, 224, 224, 1).
    """
    import keras
    import openvino as ov
    import tensorflow as tf

    first = model.get_layer("to_work_size")
    if getattr(first, "interpolation", "area") != "area":
        raise ValueError(f"unexpected first layer of the lung model: {first.name}")
    size, work = config.IMAGE_SIZE, int(first.output.shape[1])
    matrix = tf.constant(area_resize_matrix(size, work))
    inner = keras.Model(first.output, model.output)  # the network after the area resize

    def forward(x):
        x = tf.einsum("ik,nkjc->nijc", matrix, x)
        x = tf.einsum("jk,nikc->nijc", matrix, x)
        return inner(x, training=False)

    probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    gap = float(np.max(np.abs(forward(probe).numpy() - model(probe, training=False).numpy())))
    if gap > 1e-5:
        raise ValueError(f"the area resize as matrices differs from the layer by {gap:.2g}")
    spec = tf.TensorSpec([None, size, size, config.CHANNELS], tf.float32)
    ov_model = ov.convert_model(tf.function(forward, input_signature=[spec]).get_concrete_function())
    for extra in ov_model.get_results()[1:]:  # shape scalars of the resize the trace also returns
        ov_model.remove_result(extra)
    if str(ov_model.outputs[0].get_partial_shape()) != f"[?,{size},{size},1]":
        raise ValueError(f"unexpected lung model output {ov_model.outputs[0].get_partial_shape()}")
    ov_model.outputs[0].get_tensor().set_names({"lung_probability"})
    ov.save_model(ov_model, folder / MODEL_XML, compress_to_fp16=False)


QUALITY_OUTPUTS = ("orientation", "inverted")


def convert_quality(model, folder: Path) -> None:
    """Convert the quality network to an OpenVINO model (f32 weights) in ``folder``.

    Input: any batch of (size, size, 1) float32 grey 0..1 (:func:`pneumo.models.quality.prepare`);
    outputs "orientation" (N, 5) and "inverted" (N, 1).
    """
    import openvino as ov
    import tensorflow as tf

    size = int(model.input.shape[1])
    spec = tf.TensorSpec([None, size, size, 1], tf.float32)

    def forward(x):
        out = model(x, training=False)
        return [out[name] for name in QUALITY_OUTPUTS]

    ov_model = ov.convert_model(tf.function(forward, input_signature=[spec]).get_concrete_function())
    shapes = [str(output.get_partial_shape()) for output in ov_model.outputs]
    if shapes != [f"[?,{model.output['orientation'].shape[-1]}]", "[?,1]"]:
        raise ValueError(f"unexpected quality model outputs {shapes}")
    for output, name in zip(ov_model.outputs, QUALITY_OUTPUTS):
        output.get_tensor().set_names({name})
    ov.save_model(ov_model, folder / MODEL_XML, compress_to_fp16=False)


class OpenVinoNetwork:
    """A converted network in OpenVINO's CPU runtime, f32; thread-safe (one call at a time).

    Called with a batch, gives the model's outputs in order (numpy arrays of the batch). Images
    run one per request on one single-thread stream per core (``THROUGHPUT``), as the
    classifier's batches do: measured on the lung U-Net, 12-14 ms of CPU per image against 16-17
    with one request on both cores (whose threads wait for each other at every layer), and each
    image's result does not depend on what it is batched with.
    """

    runtime = "openvino"

    def __init__(self, folder: Path, threads: int | None = None):
        import openvino as ov

        self.folder = folder
        self.streams = int(threads or usable_cpus())
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(folder / MODEL_XML)), "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT",
             "NUM_STREAMS": self.streams, "INFERENCE_NUM_THREADS": self.streams})
        self.outputs = [output.get_any_name() for output in self.compiled.outputs]
        self._requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self._lock = threading.Lock()

    def __call__(self, inputs: np.ndarray) -> list[np.ndarray]:
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        n = len(inputs)
        out: list[np.ndarray] = []

        def collect(request, i: int) -> None:
            request.wait()
            for k in range(len(self.outputs)):
                got = request.get_output_tensor(k).data
                if len(out) < len(self.outputs):
                    out.append(np.empty((n,) + got.shape[1:], got.dtype))
                out[k][i] = got[0]

        with self._lock:
            running: list[tuple[object, int]] = []
            for i in range(n):
                request = self._requests[i % len(self._requests)]
                if i >= len(self._requests):
                    collect(*running[i - len(self._requests)])
                request.start_async(inputs[i:i + 1])
                running.append((request, i))
            for request, i in running[max(0, n - len(self._requests)):]:
                collect(request, i)
        return out or [np.zeros((0,), np.float32) for _ in self.outputs]  # (an empty batch)


def load_network(model_path: str | Path, kind: str, load,
                 cache_dir: str | Path | None = None) -> OpenVinoNetwork:
    """The OpenVINO network for the ``.keras`` file ``model_path`` (``kind``: ``"lungs"`` or
    ``"quality"``), from the cache, built there first from the Keras model (``load(path)``)
    when missing; a cached model that cannot be loaded is rebuilt once. Raises ImportError
    when OpenVINO is not installed, and whatever the conversion raises."""
    if not available("openvino"):
        raise ImportError("openvino is not installed")
    model_path = Path(model_path)
    cache_dir = Path(cache_dir) if cache_dir is not None else config.RUNTIME_CACHE_DIR
    sha256 = file_sha256(model_path)
    folder = build_cached(model_path, sha256, cache_dir, "openvino", kind, load)
    try:
        return OpenVinoNetwork(folder)
    except Exception as err:
        log.warning("cached %s model in %s unusable (%s); rebuilding it", kind, folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return OpenVinoNetwork(build_cached(model_path, sha256, cache_dir, "openvino", kind, load))


class OpenVinoExplainer(ForwardExplainer):
    """The forward pass in OpenVINO's CPU runtime, f32; thread-safe (one call at a time).

    Two compilations of the same model: one image runs on all cores at once (``LATENCY``: the
    lowest time for one image); a batch is cut into chunks of :data:`CHUNK` images that run on one
    stream per core (``THROUGHPUT``, one thread each: no barrier between the cores at every
    layer, and a chunk's activations stay in that core's cache). Both give the same result to the
    bit for an image, whatever it is batched with (tested).
    """

    runtime = "openvino"
    CHUNK = 1  # images per throughput request (measured: 1 and 2 beat 3, 4, 5, 10 and the whole batch)

    def __init__(self, folder: Path, threads: int | None = None):
        import openvino as ov

        with np.load(folder / HEAD_FILE) as head:
            self.head = Head.from_arrays(head)
        self.folder = folder
        cores = int(threads or usable_cpus())
        self._core = ov.Core()
        self.streams = cores
        self._compiled: dict[str, tuple] = {}  # input type -> (request, batch requests, compiled)
        self._lock = threading.Lock()
        self._requests_for("u8")  # what the app and the CLIs pass: uint8 pixels

    def _requests_for(self, kind: str) -> tuple:
        """The one-image request and the batch's requests for ``kind`` input ("u8" or "f32").

        For uint8 pixels the model takes uint8 and converts to f32 as its first step (OpenVINO's
        pre-processing): exact, the same result to the bit as a float32 input, and it saves
        the float copy of every batch (measured 5.1 -> 4.7 ms per image in a batch of 20).
        """
        if kind not in self._compiled:
            import openvino as ov
            from openvino.preprocess import PrePostProcessor

            model = self._core.read_model(str(self.folder / MODEL_XML))
            if kind == "u8":
                ppp = PrePostProcessor(model)
                ppp.input().tensor().set_element_type(ov.Type.u8)
                ppp.input().preprocess().convert_element_type(ov.Type.f32)
                model = ppp.build()
            base = {"INFERENCE_PRECISION_HINT": "f32"}  # never bf16: |dp| ~1e-3 on CPUs with it
            one = self._core.compile_model(
                model, "CPU", {**base, "PERFORMANCE_HINT": "LATENCY",
                               "INFERENCE_NUM_THREADS": self.streams})
            batch = None
            if self.streams > 1:
                batched = self._core.compile_model(
                    model, "CPU", {**base, "PERFORMANCE_HINT": "THROUGHPUT",
                                   "NUM_STREAMS": self.streams,
                                   "INFERENCE_NUM_THREADS": self.streams})
                batch = [batched.create_infer_request() for _ in range(2 * self.streams)]
            self._compiled[kind] = (one.create_infer_request(), batch, one)
        return self._compiled[kind][:2]

    @property
    def compiled(self):
        """The compiled one-image model for uint8 input (its settings are what tests check)."""
        return self._compiled["u8"][2]

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.asarray(images)
        kind = "u8" if images.dtype == np.uint8 else "f32"
        images = np.ascontiguousarray(images, dtype=np.uint8 if kind == "u8" else np.float32)
        with self._lock:
            request, batch = self._requests_for(kind)
            if batch is None or len(images) < 2:
                request.infer(images)
                prob, logit, feats = (request.get_output_tensor(i).data.copy()
                                      for i in range(len(OUTPUTS)))
                return prob.reshape(-1), logit.reshape(-1), feats
            return self._forward_chunks(images, batch)

    def _forward_chunks(self, images: np.ndarray, requests: list
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunks of :data:`CHUNK` images on the throughput streams, results written in place."""
        n = len(images)
        out: list[np.ndarray] | None = None
        starts = list(range(0, n, self.CHUNK))
        running: list[tuple[object, int]] = []

        def collect(request, start: int) -> None:
            nonlocal out
            request.wait()
            got = [request.get_output_tensor(i).data for i in range(len(OUTPUTS))]
            if out is None:
                out = [np.empty((n,) + g.shape[1:], g.dtype) for g in got]
            for target, g in zip(out, got):
                target[start:start + len(g)] = g

        for k, start in enumerate(starts):
            request = requests[k % len(requests)]
            if k >= len(requests):
                collect(*running[k - len(requests)])
            request.start_async(images[start:start + self.CHUNK])
            running.append((request, start))
        for request, start in running[max(0, len(starts) - len(requests)):]:
            collect(request, start)
        prob, logit, feats = out
        return prob.reshape(-1), logit.reshape(-1), feats


class LiteRtExplainer(ForwardExplainer):
    """The forward pass in LiteRT (XNNPACK, f32); thread-safe (one request at a time)."""

    runtime = "litert"

    def __init__(self, folder: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        with np.load(folder / HEAD_FILE) as head:
            self.head = Head.from_arrays(head)
        self.folder = folder
        self._interpreter = Interpreter(model_path=str(folder / LITERT_FILE),
                                        num_threads=threads or usable_cpus())
        self._runner = self._interpreter.get_signature_runner()
        details = self._runner.get_input_details()
        self._input = next(iter(details))
        self._outputs = sorted(self._runner.get_output_details())  # output_0, output_1, output_2
        self._lock = threading.Lock()

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(images, dtype="float32")
        with self._lock:
            out = self._runner(**{self._input: images})
        prob, logit, feats = (np.array(out[name]) for name in self._outputs)
        return prob.reshape(-1), logit.reshape(-1), feats


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_EXPLAINERS = {"openvino": OpenVinoExplainer, "litert": LiteRtExplainer}
RUNTIMES = ("auto", "keras", *_EXPLAINERS)  # what ``load_explainer(runtime=...)`` accepts


def _fast_explainer(model_path: Path, cache_dir: Path, backend: str) -> ForwardExplainer:
    """From the cache; a cached model that cannot be loaded is rebuilt once."""
    sha256 = file_sha256(model_path)
    folder = build_cached(model_path, sha256, cache_dir, backend)
    try:
        return _EXPLAINERS[backend](folder)
    except Exception as err:
        log.warning("cached %s model in %s unusable (%s); rebuilding it", backend, folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return _EXPLAINERS[backend](build_cached(model_path, sha256, cache_dir, backend))


AUTO_ORDER = ("openvino", "litert")  # "auto" tries these in turn (fastest measured first)


def load_explainer(model_path: str | Path | None = None, runtime: str = config.RUNTIME,
                   cache_dir: str | Path | None = None):
    """The explainer to serve with: the first installed of :data:`AUTO_ORDER` (``"auto"``), else
    Keras.

    ``runtime``: "auto", "openvino" or "litert" (an error when it cannot be used) or "keras".
    Raises ``FileNotFoundError`` (with how to train one) when there is no model file.
    """
    model_path = Path(model_path) if model_path is not None else config.weights_path(config.MODEL_FILE)
    if not model_path.exists():  # (the words of pneumo.models.classifier.load_model, without importing Keras)
        raise FileNotFoundError(
            f"No model at {model_path}. Train one with `python -m pneumo.train --data PATH`."
        )
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}")
    cache_dir = Path(cache_dir) if cache_dir is not None else config.RUNTIME_CACHE_DIR
    for backend in AUTO_ORDER if runtime == "auto" else (() if runtime == "keras" else (runtime,)):
        if not available(backend):
            if runtime != "auto":
                raise ImportError(f"{_MODULES[backend].split('.')[0]} is not installed: "
                                  "pip install -r requirements.txt")
            log.info("%s is not installed", backend)
            continue
        try:
            return _fast_explainer(model_path, cache_dir, backend)
        except Exception as err:
            if runtime != "auto":
                raise
            log.warning("%s runtime not used (%s)", backend, err)
    from pneumo.models.classifier import load_model
    from pneumo.models.explain import CamExplainer

    return CamExplainer(load_model(model_path))
