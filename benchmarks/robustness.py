"""Does the bundled model give the same answer however a radiograph was encoded?

    python benchmarks/robustness.py [--data ../shared/data/chest_xray] [--limit N]

Re-encodes every official test image four ways (:mod:`pneumo.evaluation.robustness`: 2x bicubic PNG,
JPEG quality 95 and 50, a 5 % border crop), reads each through the app's decode path, and
compares the bundled model's probability with the original file's. Prints, per re-encoding,
the share of decisions that flip at the recommended threshold and |dp| p50 / p95 / max
(targets: flips <= 1 %, |dp| p95 <= 0.05), and writes ``benchmarks/robustness_results.json``
with the model's sha256, the threshold and n.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent

from pneumo import config  # noqa: E402
from pneumo.evaluation.robustness import TRANSFORMS, probabilities, summarize  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_FLIP_SHARE = config.ROBUSTNESS_MAX_FLIP_SHARE
MAX_ABS_DP_P95 = config.ROBUSTNESS_MAX_ABS_DP_P95


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="Kaggle-layout chest_xray folder (its test split is used)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N test images, taken evenly from the sorted list")
    parser.add_argument("--out", type=Path, default=HERE / "robustness_results.json")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="val: the validation split carved from train (for choosing recipes)")
    parser.add_argument("--weights", type=Path, default=config.WEIGHTS_DIR,
                        help="folder with pneumo.keras and metrics.json")
    args = parser.parse_args(argv)

    from pneumo.data.splits import load_splits
    from pneumo.evaluation.artifacts import recommended_threshold
    from pneumo.models.classifier import Predictor, load_model

    samples = load_splits(args.data)[args.split]
    if not samples:
        sys.exit(f"no {args.split} images under {args.data}")
    if args.limit and args.limit < len(samples):  # evenly spaced, so both classes take part
        step = len(samples) / args.limit
        samples = [samples[int(i * step)] for i in range(args.limit)]
    model_path = args.weights / config.MODEL_FILE
    fingerprint = sha256(model_path)
    predictor = Predictor(load_model(model_path))
    if sha256(model_path) != fingerprint:
        sys.exit(f"{model_path} changed while it was being loaded; run again")
    threshold = recommended_threshold(args.weights)

    files = [s.path.read_bytes() for s in samples]
    start = time.perf_counter()
    base = probabilities(predictor, files)
    results = {}
    for name, transform in TRANSFORMS.items():
        results[name] = summarize(base, probabilities(predictor, files, transform), threshold)
    seconds = time.perf_counter() - start

    print(f"{len(files)} {args.split} images, threshold {threshold}, model sha256 {fingerprint[:12]}")
    print(f"{'re-encoding':<12}{'flips':>8}{'share':>8}{'|dp| p50':>10}{'p95':>8}{'max':>8}"
          f"{'mean dp':>9}  target")
    for name, r in results.items():
        met = r["flip_share"] <= MAX_FLIP_SHARE and r["abs_dp_p95"] <= MAX_ABS_DP_P95
        print(f"{name:<12}{r['flips']:>8}{r['flip_share']:>8.1%}{r['abs_dp_p50']:>10.4f}"
              f"{r['abs_dp_p95']:>8.4f}{r['abs_dp_max']:>8.4f}{r['mean_dp']:>+9.4f}  "
              f"{'met' if met else 'MISSED'}")
    out = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_sha256": fingerprint,
        "threshold": threshold,
        "n": len(files),
        "split": args.split,
        "data": str(args.data),
        "targets": {"max_flip_share": MAX_FLIP_SHARE, "max_abs_dp_p95": MAX_ABS_DP_P95},
        "seconds": round(seconds, 1),
        "transforms": results,
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
