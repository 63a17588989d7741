"""One inference queue per server: every session's images go through one worker, in shared batches.

:class:`InferenceQueue` is explainer-like (``explain(images)`` -> one Explanation per image), so
:func:`pneumo.reading.reader.read_batch` takes it in place of an explainer. A single worker thread owns
the model. When several callers are waiting, it takes the first request, waits at most
``max_wait_s`` (10 ms) for others to join, and runs them as one batch of at most ``max_batch``
images; a caller alone is served at once, with no wait. A caller's images go in requests of at
most ``request_images``, so eight sessions uploading at once share every batch instead of waiting
for each other's whole upload. Each image's result does not depend on what it was batched with
(a test checks this against the plain explainer). Memory is bounded: at most ``max_pending``
requests wait; a caller beyond that blocks until there is room.

The model is loaded and warmed up by the worker thread as soon as the queue is created (the
server's start), so the first upload does not pay for it; ``explain`` waits until it is ready.

:func:`log_reading` is the server-side clock of ``benchmarks/load_test.py``: off unless the
environment variable :data:`TIMING_LOG_ENV` names a file (the load test sets it for the server
it starts), it appends one line per reading: an anonymous session number, how many images, and
when the script run that received them started and when their results were ready. Nothing
else: no file name, no image bytes, nothing from a file's contents.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from pneumo import config
from pneumo.models.explain import pixel_batch

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: np.ndarray
    future: Future = field(default_factory=Future)


class InferenceQueue:
    """A single worker that batches ``explain`` calls from all threads (sessions)."""

    def __init__(self, load: Callable[[], object], max_wait_s: float = config.QUEUE_MAX_WAIT_S,
                 max_batch: int = config.QUEUE_MAX_BATCH,
                 request_images: int = config.QUEUE_REQUEST_IMAGES,
                 max_pending: int = config.QUEUE_MAX_PENDING, warm_up: bool = True):
        self.max_wait_s, self.max_batch = max_wait_s, max_batch
        self.request_images = min(request_images, max_batch)
        self._load, self._warm_up = load, warm_up
        self._requests: queue.Queue[_Request] = queue.Queue(maxsize=max_pending)
        self._ready = threading.Event()
        self._callers = 0  # threads inside explain() now
        self._announced = 0  # requests a caller is about to put, not yet taken by the worker
        self._state_lock = threading.Lock()
        self._stopped = False  # after close(): callers are served in their own thread
        self._callers_lock = threading.Lock()
        self.explainer = None
        self.load_error: BaseException | None = None
        self.load_seconds: float | None = None
        self.batches: list[int] = []  # images per batch run, the last 1000 (for tests and stats)
        self._worker = threading.Thread(target=self._run, name="pneumo-inference", daemon=True)
        self._worker.start()

    # --- callers ---

    @property
    def runtime(self) -> str:
        return getattr(self.explainer, "runtime", "?")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is loaded (or failed to load); False on timeout."""
        return self._ready.wait(timeout)

    def explain(self, images: np.ndarray, batch_size: int | None = None) -> list:
        """(N, 224, 224, 3) RGB 0-255 -> one Explanation per image, as the wrapped explainer gives.

        ``batch_size`` is accepted for the explainer interface and ignored: the queue batches.
        """
        images = pixel_batch(images)
        self._ready.wait()
        if self.load_error is not None:
            raise self.load_error
        starts = range(0, len(images), self.request_images)
        with self._callers_lock:
            self._callers += 1
            self._announced += len(starts)
        try:
            futures = []
            for i in starts:
                request = _Request(images[i:i + self.request_images])
                self._submit(request)  # waits while max_pending requests wait
                futures.append(request.future)
            out = []
            for future in futures:
                out.extend(future.result())
            return out
        finally:
            with self._callers_lock:
                self._callers -= 1

    def _submit(self, request: _Request) -> None:
        while True:
            with self._state_lock:
                if self._stopped:  # closed: no worker any more, serve it here
                    with self._callers_lock:
                        self._announced -= 1
                    self._serve([request], len(request.images))
                    return
                try:
                    self._requests.put_nowait(request)
                    return
                except queue.Full:
                    pass
            time.sleep(0.002)  # room is made by the worker

    def close(self) -> None:
        """Stop the worker once the requests already queued are served. A caller still holding
        the queue is then served in its own thread; the model goes when the last one lets go."""
        self._requests.put(None)

    def _stop(self) -> None:
        with self._state_lock:
            self._stopped = True
            leftovers = []
            while True:
                try:
                    request = self._take(block=False)
                except queue.Empty:
                    break
                if request is not None:
                    leftovers.append(request)
        for request in leftovers:
            self._serve([request], len(request.images))

    # --- the worker ---

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            self.explainer = self._load()
            if self._warm_up:
                self.explainer.explain(np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE,
                                                 config.CHANNELS), dtype="uint8"))
            self.load_seconds = time.perf_counter() - start
        except BaseException as err:  # every caller gets this error instead of a result
            self.load_error = err
            log.warning("the model could not be loaded: %s", err)
            return
        finally:
            self._ready.set()
        nothing = object()
        carry: object = nothing
        while True:
            first = carry if carry is not nothing else self._take()
            carry = nothing
            if first is None:  # close()
                self._stop()
                return
            batch, count = [first], len(first.images)
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_batch:
                try:
                    request = self._take(block=False)
                except queue.Empty:
                    with self._callers_lock:
                        # wait only for requests on their way or for other sessions to join
                        worth_waiting = self._announced > 0 or self._callers > 1
                    remaining = deadline - time.monotonic()
                    if not worth_waiting or remaining <= 0:
                        break
                    try:
                        request = self._take(timeout=remaining)
                    except queue.Empty:
                        break
                if request is None or count + len(request.images) > self.max_batch:
                    carry = request  # first in the next batch (None: close after this batch)
                    break
                batch.append(request)
                count += len(request.images)
            self._serve(batch, count)

    def _take(self, block: bool = True, timeout: float | None = None) -> _Request | None:
        request = self._requests.get(block, timeout)
        if request is not None:
            with self._callers_lock:
                self._announced -= 1
        return request

    def _serve(self, batch: list[_Request], count: int) -> None:
        self.batches = self.batches[-999:] + [count]
        try:
            images = np.concatenate([r.images for r in batch]) if len(batch) > 1 else batch[0].images
            results = self.explainer.explain(images, batch_size=self.max_batch)
        except BaseException as err:  # the callers of this batch get the error, the queue goes on
            for request in batch:
                request.future.set_exception(err)
            return
        start = 0
        for request in batch:
            request.future.set_result(results[start:start + len(request.images)])
            start += len(request.images)


# --- the load test's server-side clock ---

TIMING_LOG_ENV = "PNEUMO_TIMING_LOG"  # a file path: log_reading appends to it; unset: off
_SESSION_KEY = "_pneumo_timing_session"
_SESSIONS = itertools.count(1)
_TIMING_LOCK = threading.Lock()


def timing_enabled() -> bool:
    return bool(os.environ.get(TIMING_LOG_ENV))


def log_reading(session_state: MutableMapping, images: int, started: float,
                finished: float | None = None) -> None:
    """Append ``{"session", "images", "start", "end"}`` (``time.monotonic()`` seconds) to the file
    named by :data:`TIMING_LOG_ENV`; nothing at all when it is unset.

    ``session_state`` (Streamlit's, per browser session) only keeps the session's number, drawn
    from a counter the first time that session logs.
    """
    path = os.environ.get(TIMING_LOG_ENV)
    if not path:
        return
    finished = time.monotonic() if finished is None else finished
    with _TIMING_LOCK:
        number = session_state.get(_SESSION_KEY)
        if not isinstance(number, int):
            number = session_state[_SESSION_KEY] = next(_SESSIONS)
        record = {"session": number, "images": int(images), "start": round(float(started), 4),
                  "end": round(float(finished), 4)}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
