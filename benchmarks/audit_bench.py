"""What an audit record adds to a reading on SQLite (issue #24's target: <= 5 ms a record).

    python benchmarks/audit_bench.py [--records 300] [--out benchmarks/audit_results.json]

Times :meth:`pneumo.audit.AuditStore.record_readings` exactly as the app calls it after a new
upload is read: one reading a call (one transaction, committed with SQLite's
``synchronous=FULL`` in WAL mode, so the record is on disk when the call returns), and a batch
of eight readings a call (the app records a batch of uploads in one transaction), on a fresh
SQLite file in a temporary folder on this machine's disk. Readings are made up (a digest, a
probability): no model is run. Median, 95th percentile and maximum, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pneumo import audit  # noqa: E402
from pneumo.reading import reader  # noqa: E402

OUT = ROOT / "benchmarks" / "audit_results.json"
TARGET_MS = 5.0


def _readings(n: int, seed: int) -> list[reader.Reading]:
    rng = np.random.default_rng(seed)
    return [reader.Reading(name=f"f{i}.png", digest=reader.digest_of(rng.bytes(64)),
                           probability=float(rng.random())) for i in range(n)]


def _summary(times_s: list[float], per: int) -> dict:
    ms = sorted(t * 1000 / per for t in times_s)
    return {"calls": len(ms), "readings_per_call": per,
            "median_ms_per_record": round(statistics.median(ms), 3),
            "p95_ms_per_record": round(ms[int(0.95 * (len(ms) - 1))], 3),
            "max_ms_per_record": round(ms[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300, help="calls timed per case")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    actor = audit.Actor(subject="bench", email="bench@example.org", host="bench")
    results = {}
    with tempfile.TemporaryDirectory(prefix="pneumo-audit-bench-") as folder:
        store = audit.AuditStore(f"sqlite:///{folder}/audit.sqlite3")
        store.record_readings(actor, _readings(1, 0), 0.5)  # warm: connection pool, tables
        for name, per in (("one_reading_a_call", 1), ("eight_readings_a_call", 8)):
            times = []
            for i in range(args.records):
                batch = _readings(per, i + 1)
                start = time.perf_counter()
                store.record_readings(actor, batch, 0.5)
                times.append(time.perf_counter() - start)
            results[name] = _summary(times, per)
    one = results["one_reading_a_call"]
    out = {
        "what": "pneumo.audit.AuditStore.record_readings on SQLite (WAL, synchronous=FULL), "
                "fresh file in a temporary folder",
        "target_ms_per_record": TARGET_MS,
        "meets_target_at_median": one["median_ms_per_record"] <= TARGET_MS,
        "meets_target_at_p95": one["p95_ms_per_record"] <= TARGET_MS,
        **results,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "note": "shared 2-core machine with a model training in the background"},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
