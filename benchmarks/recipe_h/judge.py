"""The heat-map recipes' rules (docs/heatmaps_and_ensemble.md, each declared before its runs),
applied to one seed.

    python benchmarks/recipe_h/judge.py RUN_DIR HEATMAPS_VAL_JSON --seed S [--recipe H|HP]

Reads the run's ``training.json`` (the calibrated validation log loss) and the heat-map
measures of ``benchmarks/heatmaps.py --split val`` for that model, and writes
``benchmarks/recipe_h/seedS.json`` (recipe H) or ``hp_seedS.json`` (recipe HP): the figures,
the three conditions and whether the seed meets them. A recipe is kept only if every declared
seed meets them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RULE = {"min_flip_equivariance": 0.8, "flip_above_unflipped": True, "max_val_log_loss": 0.104,
        "side_preference_range": [0.2, 0.8], "seeds": [1337, 2027]}
# Recipe HP: H plus --lung-penalty 0.1, the same conditions, its log-loss bar written exactly
# (declared after H's decision, before any HP run).
RULES = {"H": RULE, "HP": {**RULE, "max_val_log_loss": 0.1042}}
RECIPES = {"H": ("H: run 3's recipe + --hflip 0.5", "--hflip 0.5", "seed"),
           "HP": ("HP: H + --lung-penalty 0.1", "--hflip 0.5 --lung-penalty 0.1", "hp_seed")}


def val_log_loss(training: dict) -> float:
    """A run's calibrated validation log loss (its ``training.json``), the rules' measure."""
    return training["calibration"]["val_log_loss_original_images"]


def read_pneumonia(heatmaps: Path) -> dict:
    """The PNEUMONIA validation section of a ``benchmarks/heatmaps.py --split val`` result."""
    return json.loads(heatmaps.read_text())["heatmaps"]["val"]["PNEUMONIA"]


def pneumonia_figures(pneumonia: dict) -> dict[str, float]:
    """The heat-map figures the records keep, from :func:`read_pneumonia`'s section."""
    return {"flip_equivariance": pneumonia["flip_equivariance"]["mean"],
            "unflipped_correlation": pneumonia["unflipped_correlation"]["mean"],
            "side_preference": pneumonia["side_preference"]["right_share"],
            "diversity": pneumonia["diversity"]["mean"],
            "occlusion_faithfulness": pneumonia["occlusion_faithfulness"]["mean"]}


def reencoding_abs_dp_p95_mean(robustness: Path) -> float:
    """Mean over the re-encodings of |dp| p95 in a ``benchmarks/robustness.py`` result."""
    transforms = json.loads(robustness.read_text())["transforms"]
    return sum(t["abs_dp_p95"] for t in transforms.values()) / len(transforms)


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
    parser.add_argument("--recipe", choices=sorted(RULES), default="H")
    args = parser.parse_args(argv)
    rule = RULES[args.recipe]
    what, flags, prefix = RECIPES[args.recipe]
    training = json.loads((args.run / "training.json").read_text())
    pneumonia = read_pneumonia(args.heatmaps)
    figures = {"val_log_loss": val_log_loss(training), **pneumonia_figures(pneumonia),
               "peak_image_right_share": pneumonia["peak_side"]["right_share"]}
    met = conditions(figures, rule)
    record = {"recipe": what, "recipe_key": args.recipe, "seed": args.seed,
              "command": f"python -m pneumo.train --data ../shared/data/chest_xray --out DIR "
                         f"{flags} --seed {args.seed}",
              "training": {"checkpoint": training.get("checkpoint"),
                           "duration_minutes": training.get("duration_minutes")},
              "rule": rule, "validation_pneumonia": figures, "conditions": met,
              "meets_rule": all(met.values())}
    out = Path(__file__).with_name(f"{prefix}{args.seed}.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"figures": figures, "conditions": met}, indent=1))


if __name__ == "__main__":
    main()
