"""From the PACS and back, timed (issue #23's target: search + retrieve + read of 20 studies,
one 2000x2500 16-bit CR image each, from Orthanc on loopback, <= 2 s with the models loaded;
with ``--send`` reported beside it).

    python benchmarks/pacs_bench.py [--studies 20] [--repeat 3]

Starts the tests' Orthanc with its DICOMweb plugin on free loopback ports in a temporary folder
(``tests/pacs_server.py``; Debian's ``orthanc`` and ``orthanc-dicomweb``, which
``tools/run_tests.sh`` installs as root), stores the studies (synthetic 12-bit radiographs in
16-bit CR files, made here), loads pneumo's models once, then times, per repetition: the search,
listing each study's frontal images, retrieving them in memory, and reading them exactly as the
batch command does (:func:`pneumo.reading.reader.read_batch` with every check). Then the
results are stored back once (SR, and SC where a heat map is due), timed apart.
Results go to ``benchmarks/pacs_results.json``; Orthanc is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_S = 2.0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("pacs_results.json"))
    args = parser.parse_args(argv)
    import pytest
    from pacs_server import Orthanc

    from pneumo.cli.loaders import load_quality_checker, load_scope_check, load_segmenter
    from pneumo.evaluation import artifacts
    from pneumo.io import pacs
    from pneumo.models import ood
    from pneumo.models.runtime import load_explainer
    from pneumo.reading.pacs_results import Sender
    from pneumo.reading.reader import read_batch

    with tempfile.TemporaryDirectory(prefix="pneumo-pacs-bench-") as folder:
        try:
            server = Orthanc(Path(folder))
        except pytest.skip.Exception as err:
            print(f"skipped: {err}")
            return 0
        try:
            client = server.client()
            client.store([cr_dataset(i, i) for i in range(args.studies)])
            explainer, detector = load_explainer(), ood.load_detector()
            checks = dict(ood_check=detector, segmenter=load_segmenter(),
                          quality_checker=load_quality_checker(), scope_check=load_scope_check())
            read_batch([("warm", client.retrieve(client.frontal_images(
                client.search_studies(patient_id="PID-B000")[0].study_instance_uid)[0]))],
                explainer, **checks)  # the runtime's first calls are not what is timed
            times, parts, readings = [], [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                studies = client.search_studies()  # every study: the ones stored
                refs = [r for s in studies for r in client.frontal_images(s.study_instance_uid)]
                listed = time.perf_counter()
                files = [(r.sop_instance_uid, client.retrieve(r)) for r in refs]
                retrieved = time.perf_counter()
                readings = read_batch(files, explainer, batch_size=16, **checks)
                done = time.perf_counter()
                times.append(done - started)
                parts.append({"search_and_list_s": listed - started,
                              "retrieve_s": retrieved - listed, "read_s": done - retrieved})
            headers = {name: pacs.header_of(data) for name, data in files}
            sender = Sender(client, artifacts.recommended_threshold())
            started = time.perf_counter()
            for reading in readings:
                if reading.ok:
                    sender.send(headers[reading.name], reading)
            send_s = time.perf_counter() - started
        finally:
            server.stop()
    median = statistics.median(times)
    result = {"studies": args.studies, "images": len(readings), "image": "2000x2500 16-bit CR",
              "repeats": args.repeat, "search_retrieve_read_s": {"median": median, "all": times},
              "parts_s": parts, "send_s": send_s, "target_s": TARGET_S, "met": median <= TARGET_S,
              "read_ok": sum(r.ok for r in readings)}
    print(f"{args.studies} studies: search + retrieve + read {median:.2f} s median "
          f"(target {TARGET_S} s: {'met' if median <= TARGET_S else 'missed'}); "
          f"send {send_s:.2f} s; parts {parts[-1]}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
