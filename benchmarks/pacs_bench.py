"""From the PACS and back, timed (issue #23's target: search + retrieve + read of 20 studies,
one 2000x2500 16-bit CR image each, from Orthanc on loopback, <= 2 s with the models loaded;
with ``--send`` reported beside it). ``benchmarks/bench.py`` has the same figures as two rows.

    python benchmarks/pacs_bench.py [--studies 20] [--repeat 5]

Starts the tests' Orthanc with its DICOMweb plugin on free loopback ports in a temporary folder
(``tests/pacs_server.py``; Debian's ``orthanc`` and ``orthanc-dicomweb``, which
``tools/run_tests.sh`` installs as root), stores the studies (synthetic 12-bit radiographs in
16-bit CR files, made here), loads pneumo's models once, then times, interleaved per repetition:

* pneumo: what ``python -m pneumo.pacs`` does: the search, each study's frontal images, then
  :func:`pneumo.reading.pacs_reading.read_instances` (retrieval ``config.PACS_RETRIEVE_WORKERS``
  at a time overlapped with decoding and the models, every check); with ``--send``, the same and
  each batch's results stored back (SR, and SC where a heat map is due) as the command does;
* the serial path it replaced: each instance retrieved in turn through dicomweb-client (parsed
  with pydicom and written back to bytes), then :func:`pneumo.reading.reader.read_batch`.

Every repetition's readings are checked against the serial path's (|dp| <= 1e-6).
Results go to ``benchmarks/pacs_results.json``; Orthanc is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_S = 2.0
STUDIES = 20
BATCH_SIZE = 16  # python -m pneumo.pacs's default --batch-size


def cr_dataset(index: int, seed: int):
    """A 2000x2500 (width x height) 16-bit CR chest image of a 3-year-old, its own study."""
    from bench import synthetic_radiograph
    from pacs_server import source_dataset
    from pydicom.uid import generate_uid

    ds = source_dataset(np.zeros((8, 8), np.uint8), f"B{index:03d}", generate_uid(), generate_uid())
    pixels = np.round(synthetic_radiograph(2500, 2000, seed) * 4095).astype("uint16")
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.tobytes()
    return ds


def load_models(explainer=None, ood_check=None) -> dict:
    """The batch command's models and checks (as ``read_batch`` keywords, explainer included);
    ``explainer`` and ``ood_check``: those loaded already (default: the bundled ones)."""
    from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer

    return {"explainer": explainer if explainer is not None else load_explainer(),
            "ood_check": ood_check if ood_check is not None else ood.load_detector(),
            "segmenter": load_segmenter(), "quality_checker": load_quality_checker(),
            "scope_check": load_scope_check()}


class Rig:
    """Orthanc loaded with ``studies`` studies, and the ways of reading them that are timed."""

    def __init__(self, server, studies: int, models: dict, batch_size: int = BATCH_SIZE):
        from pneumo.evaluation import artifacts

        self.server, self.models, self.batch_size = server, models, batch_size
        self.client = server.client()
        for i in range(studies):  # one at a time: 10 MB each
            self.client.store([cr_dataset(i, i)])
        self.threshold = artifacts.recommended_threshold()
        self._stored: list[dict] = []  # what the last send stored (Sender's record)

    def forget_results(self) -> None:
        """Delete what sending stored (through Orthanc's own REST API), so that every timed send
        is a first one (a later one also fetches the reports it supersedes)."""
        import requests
        from pacs_server import PASSWORD, USER

        base = self.server.url.removesuffix("/dicom-web")
        with requests.Session() as http:
            http.auth = (USER, PASSWORD)
            for stored in self._stored:
                for uid in stored["sop_instance_uids"]:
                    for found in http.post(f"{base}/tools/lookup", data=uid, timeout=30).json():
                        http.delete(f"{base}{found['Path']}", timeout=30).raise_for_status()
        self._stored.clear()

    def _refs(self) -> list:
        return [r for s in self.client.search_studies()
                for r in self.client.frontal_images(s.study_instance_uid)]

    def serial(self) -> dict[str, float]:
        """The path before: one instance at a time through dicomweb-client, then read_batch."""
        from pneumo.io import pacs
        from pneumo.reading.reader import read_batch

        files = [(r.sop_instance_uid, pacs.as_file_bytes(self.client.retrieve_dataset(r)))
                 for r in self._refs()]
        return {r.name: r.probability for r in read_batch(files, batch_size=self.batch_size,
                                                          **self.models)}

    def pneumo(self, send: bool = False) -> dict[str, float]:
        """What ``python -m pneumo.pacs [--send]`` does, CSV aside."""
        from pneumo.reading.pacs_reading import read_instances
        from pneumo.reading.pacs_results import Sender

        sender = Sender(self.client, self.threshold, record=self._stored.append) if send else None
        out = {}
        for chunk in read_instances(self.client, self._refs(), batch_size=self.batch_size,
                                    **self.models):
            for item in chunk:
                out[item.reading.name] = item.reading.probability
                if sender is not None and item.reading.ok:
                    sender.send(item.header, item.reading)
        return out


@contextmanager
def rig(folder: Path, studies: int = STUDIES, explainer=None, ood_check=None):
    """A :class:`Rig` (Orthanc stopped on exit), or None with the reason when Orthanc and its
    DICOMweb plugin are not installed: yields ``(rig, reason)``. ``explainer``, ``ood_check``:
    those loaded already (:func:`load_models` loads the rest once Orthanc runs)."""
    import pytest
    from pacs_server import Orthanc

    try:
        server = Orthanc(folder)
    except pytest.skip.Exception as err:
        yield None, str(err)
        return
    try:
        yield Rig(server, studies, load_models(explainer, ood_check)), ""
    finally:
        server.stop()


def timed(fn: Callable[[], dict], reference: dict | None = None) -> tuple[float, dict]:
    """Seconds ``fn()`` took and its probabilities, checked against ``reference`` (<= 1e-6)."""
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    if reference is not None:
        assert out.keys() == reference.keys()
        worst = max((abs(out[k] - reference[k]) for k in out if out[k] is not None), default=0.0)
        assert worst <= 1e-6, f"readings differ from the serial path's by {worst:.2e}"
    return seconds, out


def measure(the_rig: Rig, repeat: int) -> dict[str, list[float]]:
    """Seconds per repetition of each path, interleaved (a load change hits them alike), after
    one untimed run of each (the runtime's first calls, Orthanc's caches)."""
    reference = the_rig.serial()
    paths = {"serial": the_rig.serial, "pneumo": the_rig.pneumo,
             "pneumo_send": lambda: the_rig.pneumo(send=True)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(repeat + 1):
        for name, fn in paths.items():
            seconds = timed(fn, reference)[0]
            the_rig.forget_results()
            if i:
                times[name].append(seconds)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=STUDIES)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("pacs_results.json"))
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="pneumo-pacs-bench-") as folder, \
            rig(Path(folder), args.studies) as (the_rig, reason):
        if the_rig is None:
            print(f"skipped: {reason}")
            return 0
        times = measure(the_rig, args.repeat)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {"studies": args.studies, "image": "2000x2500 16-bit CR", "repeats": args.repeat,
              "batch_size": BATCH_SIZE, "seconds": {name: {"median": median[name], "all": values}
                                                    for name, values in times.items()},
              "target_s": TARGET_S, "met": median["pneumo"] <= TARGET_S,
              "load_average": {"before": load_before, "after": list(os.getloadavg())}}
    print(f"{args.studies} studies: search + retrieve + read {median['pneumo']:.2f} s median "
          f"(target {TARGET_S} s: {'met' if result['met'] else 'missed'}); with --send "
          f"{median['pneumo_send']:.2f} s; the serial path before: {median['serial']:.2f} s; "
          f"load average {load_before[0]:.1f}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
