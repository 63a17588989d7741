"""Recipe H's rule (docs/heatmaps_and_ensemble.md, declared before its runs), applied to one seed.

    python benchmarks/recipe_h/judge.py RUN_DIR HEATMAPS_VAL_JSON --seed S

Reads the run's ``training.json`` (the calibrated validation log loss) and the heat-map
measures of ``benchmarks/heatmaps.py --split val`` for that model, and writes
``benchmarks/recipe_h/seedS.json``: the figures, the three conditions and whether the seed
meets them. The recipe is kept only if every declared seed meets them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RULE = {"min_flip_equivariance": 0.8, "flip_above_unflipped": True, "max_val_log_loss": 0.104,
        "side_preference_range": [0.2, 0.8], "seeds": [1337, 2027]}


def conditions(figures: dict, rule: dict = RULE) -> dict[str, bool]:
    low, high = rule["side_preference_range"]
    return {
        "flip_equivariance": (figures["flip_equivariance"] >= rule["min_flip_equivariance"]
                              and figures["flip_equivariance"] > figures["unflipped_correlation"]),
        "log_loss": figures["val_log_loss"] <= rule["max_val_log_loss"],
        "side_preference": low <= figures["side_preference"] <= high,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("heatmaps", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    training = json.loads((args.run / "training.json").read_text())
    pneumonia = json.loads(args.heatmaps.read_text())["heatmaps"]["val"]["PNEUMONIA"]
    figures = {
        "val_log_loss": training["calibration"]["val_log_loss_original_images"],
        "flip_equivariance": pneumonia["flip_equivariance"]["mean"],
        "unflipped_correlation": pneumonia["unflipped_correlation"]["mean"],
        "side_preference": pneumonia["side_preference"]["right_share"],
        "diversity": pneumonia["diversity"]["mean"],
        "occlusion_faithfulness": pneumonia["occlusion_faithfulness"]["mean"],
        "peak_image_right_share": pneumonia["peak_side"]["right_share"],
    }
    met = conditions(figures)
    record = {"recipe": "H: run 3's recipe + --hflip 0.5", "seed": args.seed,
              "command": f"python -m pneumo.train --data ../shared/data/chest_xray --out DIR "
                         f"--hflip 0.5 --seed {args.seed}",
              "training": {"checkpoint": training.get("checkpoint"),
                           "duration_minutes": training.get("duration_minutes")},
              "rule": RULE, "validation_pneumonia": figures, "conditions": met,
              "meets_rule": all(met.values())}
    out = Path(__file__).with_name(f"seed{args.seed}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"figures": figures, "conditions": met}, indent=1))


if __name__ == "__main__":
    main()
