"""One ensemble member's validation record (issue #25 step 1), written as it finishes.

    python benchmarks/recipe_h/member_record.py RUN_DIR --seed S

Reads the run's ``training.json``, ``hp_heatmaps_val_seedS.json`` and
``hp_robustness_val_seedS.json`` (both in this folder) and writes ``member_seedS.json``: the
checkpoint, the calibrated validation log loss, the heat-map and re-encoding figures. The
declared failed-member rule needs all five members (its second part is relative to their
median), so the verdict is given when the ensemble is joined; only its first part, the
checkpoint at the first fine-tuning epoch, is known here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumo import config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from judge import (  # noqa: E402
    pneumonia_figures,
    read_pneumonia,
    reencoding_abs_dp_p95_mean,
    val_log_loss,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    training = json.loads((args.run / "training.json").read_text())
    record = {
        "seed": args.seed,
        "recipe": "HP: run 3's recipe + --hflip 0.5 --lung-penalty 0.1",
        "command": "python -m pneumo.train --data ../shared/data/chest_xray --out DIR "
                   f"--hflip 0.5 --lung-penalty 0.1 --seed {args.seed}",
        "training": {"checkpoint": training.get("checkpoint"),
                     "duration_minutes": training.get("duration_minutes")},
        "checkpoint_at_first_epoch": (training.get("checkpoint", {}).get("best_epoch")
                                      == config.ENSEMBLE_FAILED_BEST_EPOCH),
        "validation": {
            "val_log_loss": val_log_loss(training),
            **pneumonia_figures(read_pneumonia(HERE / f"hp_heatmaps_val_seed{args.seed}.json")),
            "reencoding_abs_dp_p95_mean": reencoding_abs_dp_p95_mean(
                HERE / f"hp_robustness_val_seed{args.seed}.json"),
        },
    }
    (HERE / f"member_seed{args.seed}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
