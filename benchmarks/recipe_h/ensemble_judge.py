"""Issue #25's ensemble sanity rule (docs/heatmaps_and_ensemble.md, "Step 1", declared before any
member's figures), applied on validation.

    python benchmarks/recipe_h/ensemble_judge.py --ensemble DIR --member SEED=DIR [--member ...]

For the ensemble and each member, reads from ``benchmarks/recipe_h/``:
``hp_heatmaps_val_seedS.json`` / ``ensemble_heatmaps_val.json`` (``benchmarks/heatmaps.py --split
val``) and ``hp_robustness_val_seedS.json`` / ``ensemble_robustness_val.json``
(``benchmarks/robustness.py --split val``), and the calibrated validation log loss from each
run folder's ``training.json``. Writes ``benchmarks/recipe_h/ensemble.json``: the figures, the
members' means, the three conditions and the verdict. The ensemble is rejected if any holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from judge import read_pneumonia, reencoding_abs_dp_p95_mean, val_log_loss  # noqa: E402

MEASURES = ("val_log_loss", "reencoding_abs_dp_p95_mean", "flip_equivariance")
# For each measure, is a higher value worse? (log loss and |dp|: yes; flip equivariance: no)
HIGHER_IS_WORSE = {"val_log_loss": True, "reencoding_abs_dp_p95_mean": True,
                   "flip_equivariance": False}


def figures(run: Path, heatmaps: Path, robustness: Path) -> dict[str, float]:
    """One model's three validation figures of the rule."""
    return {
        "val_log_loss": val_log_loss(json.loads((run / "training.json").read_text())),
        "reencoding_abs_dp_p95_mean": reencoding_abs_dp_p95_mean(robustness),
        "flip_equivariance": read_pneumonia(heatmaps)["flip_equivariance"]["mean"],
    }


def conditions(ensemble: dict[str, float], members: list[dict[str, float]]) -> dict[str, bool]:
    """For each measure: True when the ensemble is WORSE than the members' mean (a reason to reject)."""
    worse = {}
    for name in MEASURES:
        mean = sum(m[name] for m in members) / len(members)
        worse[name] = ensemble[name] > mean if HIGHER_IS_WORSE[name] else ensemble[name] < mean
    return worse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", type=Path, required=True, help="the assembled ensemble's folder")
    parser.add_argument("--member", action="append", required=True, metavar="SEED=DIR")
    args = parser.parse_args(argv)
    members = {}
    for item in args.member:
        seed, run = item.split("=", 1)
        members[int(seed)] = figures(Path(run), HERE / f"hp_heatmaps_val_seed{seed}.json",
                                     HERE / f"hp_robustness_val_seed{seed}.json")
    ensemble = figures(args.ensemble, HERE / "ensemble_heatmaps_val.json",
                       HERE / "ensemble_robustness_val.json")
    worse = conditions(ensemble, list(members.values()))
    mean = {name: sum(m[name] for m in members.values()) / len(members) for name in MEASURES}
    record = {"rule": "rejected if, on validation, the ensemble's calibrated log loss, its mean "
                      "|dp| p95 over the re-encodings or its flip equivariance (PNEUMONIA) is "
                      "worse than the members' mean",
              "members": {str(s): f for s, f in members.items()}, "members_mean": mean,
              "ensemble": ensemble, "ensemble_worse_than_members_mean": worse,
              "rejected": any(worse.values())}
    (HERE / "ensemble.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
