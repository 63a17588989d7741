"""``python -m pneumo.predict SOURCE --out OUT --engine ray``: the batch reading on Ray Data.

The same reading as the in-process engine (:func:`pneumo.cli.rows.read_chunk`, the same rows):
the files' paths become a Ray dataset, and ``map_batches`` hands chunks of ``--batch-size`` paths
to a pool of reading workers (:class:`ChunkReader`, one CPU each), each of which loads the models
once and then reads its chunks (the file is opened on the worker: on a cluster, every node must
see SOURCE at the same path, e.g. a shared or network file system, and have pneumo and its weights
installed). The rows come back to this process in file order and are written as they arrive
(:class:`pneumo.cli.rows.RowSink`: CSV, or Parquet for ``.parquet``), with a progress line.

Where it runs: without ``--address`` (and without ``RAY_ADDRESS``), on a Ray started for this run
on this machine only: every Ray port bound to 127.0.0.1 (:data:`KEEP_LOOPBACK_ENV`), no
dashboard, and stopped when the run ends. With
``--address``, on that existing cluster. Ray has no authentication: anyone who reaches a Ray
cluster's ports can run code on it, so run a cluster only on a private network that users and
the internet cannot reach. Ray's usage statistics are switched off (``RAY_USAGE_STATS_ENABLED=0``,
set before Ray is imported; start a cluster of your own with ``--disable-usage-stats``).

Ray is an optional extra (``pip install -e .[cluster]``); this module is imported, and Ray with
it, only for ``--engine ray``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from pneumo import config
from pneumo.cli.rows import COLUMNS, RowSink, Settings, cam_path, load_models, read_chunk

LOCAL_HOST = "127.0.0.1"
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # rows and paths are small; leave the memory to the models
READY = "_worker_ready"  # when the worker that read a row had loaded its models (time.time())
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_USAGE_STATS_ENABLED": "0"}


# Ray's switch for "this machine only": at "0" (read when Ray is imported) every Ray server of a
# Ray this process starts listens on 127.0.0.1 only (else on all interfaces, even with the node
# address 127.0.0.1), and a loopback --address stays loopback (else Ray swaps in this machine's
# network address, where a loopback cluster is not). On Linux it changes nothing else that
# pneumo uses (only `ray start`'s checks).
KEEP_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(address: str) -> bool:
    """True for a cluster address on this machine's loopback (127.0.0.1, localhost, ::1)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


class EngineError(RuntimeError):
    """The Ray engine cannot run (no model, no Ray, no cluster at the address): its message says why."""


def import_ray(loopback: bool = True):
    """Ray, imported with its usage statistics off (no outbound connection from pneumo) and, with
    ``loopback``, kept to 127.0.0.1 (:data:`KEEP_LOOPBACK_ENV`; a process that imported Ray
    before keeps what it had)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if loopback:
        os.environ[KEEP_LOOPBACK_ENV] = "0"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise EngineError("--engine ray needs Ray, which is not installed: pip install -e .[cluster] "
                          f"(or pip install -r requirements-cluster.txt) ({err})") from err
    return ray


def start_local(ray, num_cpus: int | None = None, **kwargs):
    """A Ray for this process on this machine only: loopback, no dashboard, a small object store."""
    return ray.init(address="local", _node_ip_address=LOCAL_HOST, include_dashboard=False,
                    num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    runtime_env={"env_vars": WORKER_ENV}, logging_level="warning", **kwargs)


class ChunkReader:
    """A Ray Data worker: loads every model once, then reads chunk after chunk of paths into rows
    (the columns of :data:`pneumo.cli.rows.COLUMNS`, text)."""

    def __init__(self, settings: Settings):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.settings = settings
        self.models = load_models()
        self.ready = time.time()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = read_chunk([Path(p) for p in batch["path"]], self.settings, self.models)
        return {**{c: np.array([row[c] for row in rows], dtype=object) for c in COLUMNS},
                READY: np.full(len(rows), self.ready)}  # (not a row's column: for the timing)


def _absolute(path: Path) -> Path:
    """An absolute path without following links (the file column stays relative to SOURCE)."""
    return Path(os.path.abspath(path))


def dataset(ray, paths: list[Path], settings: Settings, workers: int):
    """The lazy Ray dataset of the run's rows, in file order."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in file order, like the local engine
    context.enable_progress_bars = False  # pneumo prints its own progress line
    blocks = max(1, -(-len(paths) // settings.batch_size))
    items = ray.data.from_items([{"path": str(p)} for p in paths], override_num_blocks=blocks)
    return items.map_batches(ChunkReader, fn_constructor_kwargs={"settings": settings},
                             batch_size=settings.batch_size, batch_format="numpy",
                             compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1)


def run(paths: list[Path], settings: Settings, out: Path, resume: bool = False,
        address: str | None = None, workers: int | None = None,
        started: float | None = None) -> RowSink:
    """Read ``paths`` on Ray Data into ``out``; returns the closed sink (its rows and timing).

    ``address``: an existing cluster (default ``RAY_ADDRESS``; neither: a local Ray for this run).
    ``workers``: reading workers (default: one per CPU of the cluster).
    """
    from tqdm import tqdm

    if not config.weights_path(config.MODEL_FILE).exists():
        raise EngineError(f"No model at {config.weights_path(config.MODEL_FILE)}. Train one with "
                          "`python -m pneumo.train --data PATH`.")
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray = import_ray(loopback=not address or is_loopback(address))
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # pneumo prints its own progress line
    shown_cams = settings.cams
    remote = Settings(folder=_absolute(settings.folder), threshold=settings.threshold,
                      calibration=settings.calibration, batch_size=settings.batch_size,
                      auto_correct=settings.auto_correct,
                      cams=None if settings.cams is None else _absolute(settings.cams))
    paths = [_absolute(p) for p in paths]
    began = time.time()
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, logging_level="warning")
        else:
            start_local(ray)
    except Exception as err:  # no cluster there, or Ray could not start
        raise EngineError(f"Ray could not {'connect to ' + address if address else 'start'}: "
                          f"{err}") from err
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus)
        print(f"note: Ray {'at ' + address if address else 'started on ' + LOCAL_HOST} in "
              f"{time.time() - began:.1f} s; {workers} reading worker(s) on {cpus} CPU(s).",
              file=sys.stderr)
        rows_of = dataset(ray, paths, remote, workers)
        timing = {} if started is None else {"started": started}
        with RowSink(out, resume=resume, **timing) as sink, \
                tqdm(total=len(paths), unit="img", desc="Reading (ray)") as bar:
            for batch in rows_of.iter_batches(batch_size=None, batch_format="numpy"):
                rows = [dict(zip(COLUMNS, (str(v) for v in values)))
                        for values in zip(*(batch[c] for c in COLUMNS))]
                for row in rows:  # the overlay's path as given, not the worker's absolute one
                    if row["cam_file"] and shown_cams is not None:
                        row["cam_file"] = cam_path(shown_cams, row["file"]).as_posix()
                sink.write(rows)
                ready = float(batch[READY].min())
                sink.ready = ready if sink.ready is None else min(sink.ready, ready)
                bar.update(len(rows))
    finally:
        ray.shutdown()  # stops the local Ray; only disconnects from a cluster at an address
    return sink
