"""``python -m pneumo.ood --refit``: refit only the out-of-distribution reference (``ood.npz``)
and the ``"ood"`` section of ``metrics.json``, as ``python -m pneumo.evaluate`` does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pneumo import config
from pneumo.data.splits import layout_problem, load_arrays, load_splits
from pneumo.evaluation import artifacts
from pneumo.models.classifier import load_model, model_problem
from pneumo.models.ood import AUGMENTED_COPIES, fit_reference, pooled_features, report


def refit(data: Path, weights: Path = config.WEIGHTS_DIR, copies: int = AUGMENTED_COPIES) -> dict:
    """Refit only the OOD reference of the model in ``weights``: writes ``ood.npz`` and the
    ``"ood"`` section of ``metrics.json`` as ``python -m pneumo.evaluate`` does."""
    model = load_model(Path(weights) / config.MODEL_FILE)
    splits = load_splits(Path(data))
    arrays = {split: load_arrays(splits[split])[0] for split in ("train", "val", "test")}
    features = {split: pooled_features(model, a) for split, a in arrays.items()}
    detector = fit_reference(model, arrays["train"], arrays["val"], features["train"],
                             features["val"], copies)
    detector.save(artifacts.ood_file(Path(weights)))
    section = report(detector, {s: {"images": arrays[s], "features": features[s]}
                                for s in ("val", "test")}, copies)
    artifacts.update_metrics_section("ood", section, Path(weights))
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.ood", description="Refit the 'not a chest X-ray' reference.")
    parser.add_argument("--refit", action="store_true", required=True,
                        help="refit weights/ood.npz and the 'ood' section of metrics.json")
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="Kaggle-layout chest_xray folder")
    parser.add_argument("--weights", type=Path, default=config.WEIGHTS_DIR)
    parser.add_argument("--copies", type=int, default=AUGMENTED_COPIES,
                        help="augmented copies per radiograph (0: the first rule)")
    args = parser.parse_args(argv)
    if problem := layout_problem(args.data) or model_problem(args.weights / config.MODEL_FILE):
        parser.error(problem)
    section = refit(args.data, args.weights, args.copies)
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
