"""``python -m pneumo.population --refit``: fit the pixel population check ("looks older than the
children pneumo was trained on", :mod:`pneumo.models.population`) and write
``weights/population.npz`` and ``weights/population.json``.

The rule (declared in ``docs/scope.md`` before its figures were seen):
- *children*: Kermany train images (each with ``--child-copies`` augmented copies, since the
  classifier has seen the originals) and the validation carve-out (originals and copies);
  *older*: the NIH ChestX-ray14 images (each with ``--older-copies`` augmented copies). Copies come
  from the classifier's own augmentation (:func:`pneumo.models.ood.augmented_copies`: framing,
  resizing, blur, JPEG or none, exposure, noise), so format and sharpness are no cue.
- Patient-grouped 5-fold cross-validation (no patient on both sides). For each regularisation
  in :data:`C_GRID`, the out-of-fold scores give the threshold that flags at most
  ``config.POPULATION_MAX_CHILD_FLAG`` of the held-out validation-carve-out children's views,
  and the share of older patients' views it flags; the C that flags the most is kept.
- The final check is fitted on everything with that C and threshold. The official test split
  is never read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.data.older import SHARED_OLDER_DIR, read_older
from pneumo.data.older import layout_problem as older_problem
from pneumo.data.splits import layout_problem, load_arrays, load_splits
from pneumo.io.images import load_image
from pneumo.models.classifier import model_problem
from pneumo.models.explain import scope_features
from pneumo.models.ood import augmented_copies
from pneumo.models.population import PopulationCheck, fit_logistic, threshold_for

C_GRID = (0.001, 0.01, 0.1)
FOLDS = 5
CHILD_COPIES, OLDER_COPIES = 1, 6
SEED = 7


def pooled(explainer, images, batch: int = 64) -> np.ndarray:
    """Pooled features (N, 1280) of uint8 images (an array or an iterable of chunks)."""
    chunks = [images] if isinstance(images, np.ndarray) else images
    out = []
    for chunk in chunks:
        for i in range(0, len(chunk), batch):
            feats = explainer.forward(np.ascontiguousarray(chunk[i:i + batch]))[2]
            out.append(scope_features(feats, explainer.head))
    return np.concatenate(out).astype("float32")


def with_copies(explainer, images: np.ndarray, copies: int, seed: int,
                include_originals: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features of the originals (optionally) then ``copies`` augmented passes; and the index of
    the source image of each row."""
    parts, index = [], []
    if include_originals:
        parts.append(pooled(explainer, images))
        index.append(np.arange(len(images)))
    if copies:
        parts.append(pooled(explainer, augmented_copies(images, copies, seed)))
        index.append(np.tile(np.arange(len(images)), copies))
    return np.concatenate(parts), np.concatenate(index)


def grouped_folds(groups: np.ndarray, folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """A fold number per row; every row of a group in one fold (groups shuffled, then dealt)."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    fold_of = {g: i % folds for i, g in zip(range(len(unique)), unique[order])}
    return np.array([fold_of[g] for g in groups])


def out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray, c: float) -> np.ndarray:
    scores = np.zeros(len(y))
    for k in np.unique(fold):
        held = fold == k
        mean, scale, coef, intercept = fit_logistic(x[~held], y[~held], c)
        scores[held] = PopulationCheck(mean, scale, coef, intercept, 0.5).score(x[held])
    return scores


def patient_interval(flags: np.ndarray, groups: np.ndarray, samples: int = 2000,
                     seed: int = SEED) -> list[float]:
    """95 % interval of a flagged share, resampling patients (their images move together)."""
    unique, inverse = np.unique(groups, return_inverse=True)
    per_total = np.bincount(inverse)
    per_flag = np.bincount(inverse, weights=flags.astype("float64"))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(unique), size=(samples, len(unique)))
    shares = per_flag[draws].sum(axis=1) / per_total[draws].sum(axis=1)
    return [float(v) for v in np.quantile(shares, [0.025, 0.975])]


def refit(data: Path, older_dir: Path, weights: Path = config.WEIGHTS_DIR,
          child_copies: int = CHILD_COPIES, older_copies: int = OLDER_COPIES) -> dict:
    from pneumo.models.runtime import file_sha256, load_explainer

    started = time.time()
    splits = load_splits(Path(data))
    train, val = splits["train"], splits["val"]
    older = read_older(Path(older_dir))
    print(f"children: {len(train)} train + {len(val)} validation; older: {len(older)}", flush=True)
    model_file = Path(weights) / config.MODEL_FILE
    cache = (Path(weights) / "checkpoints"
             / f"population_features_{file_sha256(model_file)[:12]}_{child_copies}_{older_copies}.npz")
    if cache.exists():  # features of the same model and copies (weights/checkpoints is not in git)
        with np.load(cache) as z:
            f_train, i_train, f_val, i_val, f_old, i_old = (
                z[k] for k in ("f_train", "i_train", "f_val", "i_val", "f_old", "i_old"))
    else:
        explainer = load_explainer(model_file)
        x_train = load_arrays(train)[0]
        x_val = load_arrays(val)[0]
        x_old = np.stack([load_image(s.path) for s in older])
        f_train, i_train = with_copies(explainer, x_train, child_copies, SEED, include_originals=False)
        f_val, i_val = with_copies(explainer, x_val, child_copies * 2, SEED + 1)
        f_old, i_old = with_copies(explainer, x_old, older_copies, SEED + 2)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, f_train=f_train, i_train=i_train, f_val=f_val, i_val=i_val, f_old=f_old,
                 i_old=i_old)
    n_val_orig, n_old_orig = len(val), len(older)
    print(f"features in {time.time() - started:.0f} s", flush=True)

    x = np.concatenate([f_train, f_val, f_old])
    y = np.concatenate([np.zeros(len(f_train)), np.zeros(len(f_val)), np.ones(len(f_old))])
    groups = np.array([f"k:{train[i].patient}" for i in i_train]
                      + [f"k:{val[i].patient}" for i in i_val]
                      + [f"n:{older[i].patient}" for i in i_old])
    part = np.array(["train"] * len(f_train) + ["val"] * len(f_val) + ["older"] * len(f_old))
    original = np.concatenate([np.zeros(len(f_train), bool), np.arange(len(f_val)) < n_val_orig,
                               np.arange(len(f_old)) < n_old_orig])
    ages = np.array([older[i].age for i in i_old])
    fold = grouped_folds(groups)

    trials = {}
    for c in C_GRID:
        scores = out_of_fold(x, y, fold, c)
        threshold = threshold_for(scores[part == "val"], config.POPULATION_MAX_CHILD_FLAG)
        trials[c] = (float((scores[part == "older"] >= threshold).mean()), threshold, scores)
        print(f"C={c}: older views flagged {trials[c][0]:.3f} at {threshold:.4f}", flush=True)
    best_c = max(trials, key=lambda c: trials[c][0])
    _, threshold, scores = trials[best_c]
    flags = scores >= threshold

    def share(mask) -> dict:
        out = {"n": int(mask.sum()), "flagged": float(flags[mask].mean()) if mask.any() else None}
        if mask.any():
            out["interval95"] = patient_interval(flags[mask], groups[mask])
        return out

    cv = {"children_train_views": share(part == "train"),
          "children_val_originals": share((part == "val") & original),
          "children_val_all_views": share(part == "val")}
    for band, low, high in (("7-9", 7, 10), ("10-17", 10, 18), ("18+", 18, 200)):
        in_band = np.zeros(len(part), bool)
        in_band[part == "older"] = (ages >= low) & (ages < high)
        cv[f"older_{band}_originals"] = share(in_band & original)
        cv[f"older_{band}_all_views"] = share(in_band)
    cv["older_all_originals"] = share((part == "older") & original)
    older_rows = np.flatnonzero((part == "older") & original)
    oof_older = {older[int(i_old[r - len(f_train) - len(f_val)])].path.name: round(float(scores[r]), 6)
                 for r in older_rows}

    mean, scale, coef, intercept = fit_logistic(x, y, best_c)
    check = PopulationCheck(mean, scale, coef, intercept, threshold)
    check.save(Path(weights) / config.POPULATION_FILE)
    record = {
        "features": ("pooled features of the bundled classifier (avg_pool, 1280; an ensemble's "
                     "first member's)"),
        "model": "standardised L2 logistic regression, balanced classes (scikit-learn)",
        "c": best_c, "c_grid": list(C_GRID), "threshold": threshold,
        "rule": (f"patient-grouped {FOLDS}-fold CV; threshold flags at most "
                 f"{config.POPULATION_MAX_CHILD_FLAG:.1%} of held-out validation-carve-out views; "
                 "C flagging the most held-out older views"),
        "data": {"children_train": len(train), "children_val": len(val), "older": len(older),
                 "child_copies": child_copies, "older_copies": older_copies,
                 "older_patients": len({s.patient for s in older})},
        "cross_validation": cv,
        "trials": {str(c): {"older_views_flagged": t[0], "threshold": t[1]} for c, t in trials.items()},
        "seconds": round(time.time() - started),
        # each older original's out-of-fold score (its patient held out), for benchmarks/scope_check.py
        "oof_older_originals": oof_older,
    }
    (Path(weights) / config.POPULATION_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.population",
        description="Fit the 'looks older than the training children' check.")
    parser.add_argument("--refit", action="store_true", required=True,
                        help="refit weights/population.npz and weights/population.json")
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="Kaggle-layout chest_xray folder (the population)")
    parser.add_argument("--older", type=Path, default=SHARED_OLDER_DIR,
                        help="ChestX-ray14 folder: the shared sample or a full download")
    parser.add_argument("--weights", type=Path, default=config.WEIGHTS_DIR)
    parser.add_argument("--child-copies", type=int, default=CHILD_COPIES)
    parser.add_argument("--older-copies", type=int, default=OLDER_COPIES)
    args = parser.parse_args(argv)
    if problem := (layout_problem(args.data) or older_problem(args.older)
                   or model_problem(args.weights / config.MODEL_FILE)):
        parser.error(problem)
    record = refit(args.data, args.older, args.weights, args.child_copies, args.older_copies)
    print(json.dumps(record["cross_validation"], indent=2))


if __name__ == "__main__":
    main()
