"""The server's one inference queue: shared batches, identical results, no wait alone, bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pneumo.models.explain import Explanation
from pneumo.models.serving import InferenceQueue


class _Explainer:
    """A stand-in: each image's "probability" is its mean / 255; records every batch it ran."""

    runtime = "fake"

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay, self.gate, self.batches = delay, gate, []

    def explain(self, images, batch_size=16):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        images = np.asarray(images, "float32")
        self.batches.append(len(images))
        return [Explanation(float(x.mean() / 255), {"Grad-CAM": x[:7, :7, 0] / 255}, x[0, 0])
                for x in images]


def _images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3)).astype("uint8")


def test_eight_sessions_share_batches_and_get_exactly_their_own_results():
    fake = _Explainer(delay=0.05)
    q = InferenceQueue(lambda: fake, max_wait_s=0.01, max_batch=16, request_images=4,
                       warm_up=False)
    inputs = [_images(seed, 6) for seed in range(8)]
    results: dict[int, list] = {}
    start = threading.Barrier(8)

    def session(i):
        start.wait()
        results[i] = q.explain(inputs[i])

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, images in enumerate(inputs):
        alone = _Explainer().explain(images)
        assert [e.probability for e in results[i]] == [e.probability for e in alone]
        for got, want in zip(results[i], alone):
            np.testing.assert_array_equal(got.features, want.features)
    assert sum(fake.batches) == 48
    assert max(fake.batches) <= 16
    assert max(fake.batches) > 6  # some batch held several sessions' images
    assert len(fake.batches) < 12  # fewer passes than 8 sessions x 2 requests each


def test_a_caller_alone_does_not_wait_for_others():
    fake = _Explainer()
    q = InferenceQueue(lambda: fake, max_wait_s=2.0, request_images=4, warm_up=False)
    q.wait_ready(10)
    start = time.perf_counter()
    out = q.explain(_images(0, 10))
    assert time.perf_counter() - start < 1.0
    assert len(out) == 10 and sum(fake.batches) == 10


def test_a_load_error_reaches_every_caller():
    def load():
        raise FileNotFoundError("No model at x. Train one with `python -m pneumo.train`.")

    q = InferenceQueue(load, warm_up=False)
    with pytest.raises(FileNotFoundError, match="pneumo.train"):
        q.explain(_images(0, 1))


def test_an_explainer_error_fails_its_batch_only():
    class Flaky(_Explainer):
        def explain(self, images, batch_size=16):
            if np.asarray(images).max() == 0:
                raise RuntimeError("boom")
            return super().explain(images, batch_size)

    q = InferenceQueue(Flaky, warm_up=False)
    with pytest.raises(RuntimeError, match="boom"):
        q.explain(np.zeros((1, 224, 224, 3), "uint8"))
    assert len(q.explain(_images(1, 2))) == 2


def test_waiting_requests_are_bounded():
    gate = threading.Event()
    fake = _Explainer(gate=gate)
    q = InferenceQueue(lambda: fake, max_batch=2, request_images=1, max_pending=3, warm_up=False)
    q.wait_ready(10)
    out = []
    caller = threading.Thread(target=lambda: out.extend(q.explain(_images(2, 40))))
    caller.start()
    time.sleep(0.3)
    assert q._requests.qsize() <= 3 and caller.is_alive()  # the caller waits for room
    gate.set()
    caller.join(30)
    assert len(out) == 40 and max(fake.batches) <= 2


def test_close_stops_the_worker():
    q = InferenceQueue(_Explainer, warm_up=False)
    assert len(q.explain(_images(3, 1))) == 1
    q.close()
    q._worker.join(5)
    assert not q._worker.is_alive()


def test_a_caller_holding_a_closed_queue_is_still_served():
    """(A model replaced while the server runs: the old queue is closed while a session may
    still hold it.)"""
    fake = _Explainer()
    q = InferenceQueue(lambda: fake, request_images=2, warm_up=False)
    q.close()
    q._worker.join(5)
    out = q.explain(_images(4, 5))
    assert [e.probability for e in out] == [e.probability for e in _Explainer().explain(_images(4, 5))]


def test_files_decode_in_parallel_in_their_order():
    from conftest import png_bytes, synthetic_xray

    from pneumo import config
    from pneumo.reading import reader

    files = [(f"f{i}.png", png_bytes(synthetic_xray(200 + 10 * i, i))) for i in range(6)]
    files.insert(2, ("bad.png", b"not an image"))
    steps = []
    readings = reader.decode_files(files, progress=lambda f, text: steps.append(text))
    assert [r.name for r in readings] == [n for n, _ in files]
    assert readings[2].error and all(r.error is None for i, r in enumerate(readings) if i != 2)
    assert [r.original_size for r in readings if r.error is None] == [
        (200 + 10 * i, 200 + 10 * i) for i in range(6)]
    assert steps == [f"Decoding {n}" for n, _ in files]
    assert reader._decode_pool()._max_workers == config.DECODE_WORKERS >= 1


def test_timing_log_is_off_unless_asked_and_holds_only_numbers(tmp_path, monkeypatch):
    """The load test's server-side clock: nothing written without PNEUMO_TIMING_LOG; with it,
    one line per reading with an anonymous session number, an image count and two times."""
    import json

    from pneumo.models import serving

    log = tmp_path / "timing.jsonl"
    monkeypatch.delenv(serving.TIMING_LOG_ENV, raising=False)
    state: dict = {}
    serving.log_reading(state, 3, 1.0, 2.0)
    assert not log.exists() and state == {} and not serving.timing_enabled()

    monkeypatch.setenv(serving.TIMING_LOG_ENV, str(log))
    other: dict = {}
    serving.log_reading(state, 3, 1.0, 2.5)
    serving.log_reading(other, 2, 1.5, 3.0)
    serving.log_reading(state, 1, 4.0, 4.5)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [set(r) for r in records] == [{"session", "images", "start", "end"}] * 3
    assert all(isinstance(v, (int, float)) for r in records for v in r.values())
    first, second, again = (r["session"] for r in records)
    assert first == again != second  # one number per session, the same for its later readings
    assert [r["images"] for r in records] == [3, 2, 1]


def test_uint8_pixels_reach_the_runtime_as_uint8():
    """The decoder's uint8 pixels are not copied to float32 on the way (the runtime converts
    inside the model); float input still works."""
    from pneumo.models.explain import ForwardExplainer, Head

    seen = []

    class _Forward(ForwardExplainer):
        head = Head(np.ones(4, "float32"), 1.0, 0.0)

        def forward(self, images):
            seen.append(images.dtype)
            n = len(images)
            return np.full(n, 0.5), np.zeros(n), np.ones((n, 7, 7, 4), "float32")

    explainer = _Forward()
    explainer.explain(_images(0, 2))
    explainer.explain(_images(0, 2).astype("float64"))
    queue = InferenceQueue(lambda: explainer, max_wait_s=0.0)
    try:
        queue.explain(_images(1, 3))
    finally:
        queue.close()
    assert seen[0] == np.uint8 and seen[1] == np.float32
    assert seen[-1] == np.uint8
