"""Do a model's heat maps follow the film? Issue #25's step-0 measures for any model file.

    python benchmarks/heatmaps.py [--weights DIR | --model PATH] [--split val|test ...]
                                  [--member PATH ...] [--out JSON]

For each film of the split(s) and its mirror (``np.flip(image, axis=1)`` of the 224x224 input),
the model's Grad-CAM maps (7x7, :func:`pneumo.models.runtime.load_explainer`) are measured with
:mod:`pneumo.evaluation.heatmaps`, per class: flip equivariance and the unflipped correlation,
side preference (image halves, and inside the lung fields of the lung-field segmenter's masks),
peak side, diversity (correlation with the mean map), occlusion faithfulness (blurring the
favoured image half, or the lung field in it, against the other) and, with ``--member``,
agreement with other models on the heavier half. Recipe H's rule
(docs/heatmaps_and_ensemble.md) reads the PNEUMONIA validation figures.

Writes ``benchmarks/heatmaps_results.json`` for the bundled model; another model needs ``--out``.
Runs one forward pass per film, one per mirrored film and four per film for the occlusions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pneumo import config  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "heatmaps_results.json"


def limited(samples: list, limit: int | None) -> list:
    """The first ``limit`` samples taken evenly from the sorted list (both classes take part)."""
    if not limit or limit >= len(samples):
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="Kaggle-layout chest_xray folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--weights", type=Path, default=None,
                       help=f"folder with {config.MODEL_FILE} (default: the bundled weights/)")
    which.add_argument("--model", type=Path, default=None, help="a classifier .keras file")
    parser.add_argument("--split", choices=("val", "test"), action="append", default=None,
                        help="val (the carve-out, for choosing) and/or test; default both")
    parser.add_argument("--member", type=Path, action="append", default=[],
                        help="another classifier .keras file: agreement on the heavier half")
    parser.add_argument("--lungs", type=Path, default=config.weights_path(config.LUNG_MODEL_FILE),
                        help="lung-field segmenter for the in-the-lungs figures ('none': skip)")
    parser.add_argument("--runtime", default=config.RUNTIME,
                        help="auto, keras, openvino or litert (see pneumo.models.runtime)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only N films per split, taken evenly from the sorted list")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON to write (default {DEFAULT_OUT.name}, bundled model only)")
    args = parser.parse_args(argv)

    model_path = args.model or (args.weights or config.WEIGHTS_DIR) / config.MODEL_FILE
    bundled = model_path.resolve() == config.weights_path(config.MODEL_FILE).resolve()
    if args.out is None and not bundled:
        parser.error(f"{model_path} is not the bundled model: name the result file with --out")
    out_path = args.out or DEFAULT_OUT
    for path in (model_path, *args.member):
        if not path.exists():
            parser.error(f"No model at {path}")
    splits_wanted = args.split or ["val", "test"]

    from pneumo.cli.evaluate import (
        FOLLOW_METHOD,
        follow_the_film,
        follow_the_film_section,
        format_follow,
        segmenter_masks,
    )
    from pneumo.data.splits import layout_problem, load_arrays, load_splits
    from pneumo.models.runtime import file_sha256, load_explainer

    if problem := layout_problem(args.data):
        parser.error(problem)
    lungs = None if str(args.lungs) == "none" or not args.lungs.exists() else args.lungs
    fingerprint = file_sha256(model_path)
    explainer = load_explainer(model_path, runtime=args.runtime)
    members = {str(p): load_explainer(p, runtime=args.runtime) for p in args.member}
    if file_sha256(model_path) != fingerprint:
        sys.exit(f"{model_path} changed while it was being loaded; run again")
    splits = load_splits(args.data)

    start = time.perf_counter()
    per_split, seconds = {}, {}
    for split in splits_wanted:
        t0 = time.perf_counter()
        samples = limited(splits[split], args.limit)
        images, labels = load_arrays(samples, progress=False)
        masks = segmenter_masks(images, lungs) if lungs else None
        per_split[split] = follow_the_film(explainer, images, labels,
                                           None if masks is None else masks[0], members=members)
        seconds[split] = round(time.perf_counter() - t0, 1)
        print(f"{split}: {len(samples)} films in {seconds[split]} s", flush=True)

    section = follow_the_film_section(per_split, lungs)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": str(model_path),
        "model_sha256": fingerprint,
        "runtime": getattr(explainer, "runtime", "?"),
        "members": {str(p): file_sha256(p) for p in args.member},
        "data": str(args.data),
        "limit": args.limit,
        "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)},
        "definitions": {
            "flip_equivariance": "mean Pearson correlation (over the map's cells) of the mirrored "
                                 "film's map with the mirror of the film's map",
            "unflipped_correlation": "the same with the film's map unmirrored",
            "side_preference": "films whose map has more mass on the image-right half (columns "
                               "4-6 of 7) than the image-left (0-2); ties left out",
            "side_preference_in_lungs": "the same with each cell weighted by its share inside "
                                        "the segmenter's lung fields",
            "peak_side": "half holding the map's maximum cell (column 3 of 7: middle)",
            "diversity": "mean correlation of each map with the mean map of the class",
            "occlusion_faithfulness": "share of films where blurring the favoured image half "
                                      "gives a lower logit than blurring the other half",
            "occlusion_faithfulness_lungs": "the same, blurring the lung field in each half",
            "member_agreement": "share of films where the two models' maps are heavier on the "
                                "same half (ties left out)",
            "members_pairwise_agreement": "with two or more --member models: member_agreement "
                                          "on image halves for every pair of them, with the mean "
                                          "and the lowest over the pairs",
            "undefined": "films whose correlation is undefined (a constant, e.g. all-zero, map) "
                         "are left out of the means and counted",
        },
        "heatmaps": section,
    }
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model {model_path} (sha256 {fingerprint[:12]}, {result['runtime']}), {FOLLOW_METHOD}")
    print("\n".join(format_follow(section)))
    for split in splits_wanted:
        for member in members:
            agreement = per_split[split].get("PNEUMONIA", {}).get("member_agreement", {}).get(member)
            if agreement:
                print(f"  {split} PNEUMONIA agreement with {member}: " + ", ".join(
                    f"{k} {v['mean']:.1%} (n={v['n']})" for k, v in agreement.items()))
    print(f"written {out_path}")


if __name__ == "__main__":
    main()
