"""Train the image quality network (orientation and inverted grey scale), self-supervised.

    python -m pneumo.train_quality --data ../shared/data/chest_xray [--epochs N]

No new labels: every training radiograph is upright and not inverted, so transformed copies
(turned 90/180/270 deg, flipped top to bottom, inverted, and inverted combined with a turn)
label themselves. Each epoch draws new copies with acquisition variation (small rotations,
zoom and shift, down-then-up resizing, JPEG, gamma, contrast, brightness, noise) so that
untransformed images are not flagged for looking a little different. Validation is the
patient-grouped split carved from train (:func:`pneumo.data.splits.load_splits`); it picks the epoch
and the warning thresholds. The official test split is not read.

Writes ``weights/quality.keras`` and ``weights/quality.json`` (data fingerprint, validation
accuracy per transform, false-warning rate on untransformed images, thresholds, time).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pneumo import config
from pneumo.data.splits import fingerprint, layout_problem, load_splits
from pneumo.evaluation import artifacts
from pneumo.io.images import load_image
from pneumo.models import quality

# Training draws, per copy: the orientation (upright, rot90, rot180, rot270, upside_down) and
# whether it is inverted.
ORIENTATION_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)
INVERTED_PROBABILITY = 0.3
# Acquisition variation, applied to every copy before the transform.
MAX_ROTATION_DEGREES = 10.0
ZOOM = (0.9, 1.2)  # > 1 zooms in (a crop)
MAX_SHIFT = 0.06  # of the side
RESIZE_PROBABILITY = 0.3
RESIZE_SIDE = (48, 200)  # pixels: down to this, then back up to 224
JPEG_PROBABILITY = 0.3
JPEG_QUALITY = (30, 95)
GAMMA = (0.7, 1.4)
CONTRAST = (0.7, 1.3)
BRIGHTNESS = 0.1  # of the range
NOISE_PROBABILITY = 0.3
NOISE_STD = 4.0  # grey levels, at most


def decode_grey(paths: Sequence[Path]) -> np.ndarray:
    """Each file through the app's preprocessing, then to grey: (N, 224, 224) uint8."""
    out = np.empty((len(paths), config.IMAGE_SIZE, config.IMAGE_SIZE), dtype="uint8")
    for i, path in enumerate(paths):
        out[i] = cv2.cvtColor(load_image(path), cv2.COLOR_RGB2GRAY)
    return out


def shrink(grey: np.ndarray, size: int = config.QUALITY_INPUT_SIZE) -> np.ndarray:
    """224 px grey -> the network's size, as :func:`pneumo.models.quality.prepare` does (uint8)."""
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)


def vary(grey: np.ndarray, rng: np.random.Generator,
         size: int = config.QUALITY_INPUT_SIZE) -> np.ndarray:
    """One realistic acquisition variant of a 224 px grey radiograph, shrunk to ``size``."""
    n = grey.shape[0]
    matrix = cv2.getRotationMatrix2D((n / 2, n / 2), rng.uniform(-MAX_ROTATION_DEGREES,
                                                                 MAX_ROTATION_DEGREES),
                                     rng.uniform(*ZOOM))
    matrix[:, 2] += rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * n
    border = cv2.BORDER_REPLICATE if rng.random() < 0.5 else cv2.BORDER_CONSTANT
    img = cv2.warpAffine(grey, matrix, (n, n), flags=cv2.INTER_LINEAR, borderMode=border,
                         borderValue=int(rng.integers(0, 256)))
    if rng.random() < RESIZE_PROBABILITY:
        side = int(rng.integers(*RESIZE_SIDE))
        img = cv2.resize(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), (n, n),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < JPEG_PROBABILITY:
        quality_ = int(rng.integers(*JPEG_QUALITY))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality_])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    x = shrink(img, size).astype("float32") / 255.0
    x = x ** rng.uniform(*GAMMA)
    x = (x - x.mean()) * rng.uniform(*CONTRAST) + x.mean() + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    if rng.random() < NOISE_PROBABILITY:
        x = x + rng.normal(0.0, rng.uniform(0, NOISE_STD) / 255.0, x.shape)
    return np.clip(np.round(x * 255.0), 0, 255).astype("uint8")


def transform(small: np.ndarray, orientation: int, inverted: bool) -> np.ndarray:
    """Apply an orientation (index into ``quality.ORIENTATIONS``) and inversion to uint8."""
    out = quality.apply(small, quality.ORIENTATIONS[orientation])
    return quality.apply(out, quality.INVERTED) if inverted else out


def epoch_batch(greys: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fresh transformed, varied copy of every training image, with its labels."""
    orientation = rng.choice(len(quality.ORIENTATIONS), len(greys), p=ORIENTATION_WEIGHTS)
    inverted = rng.random(len(greys)) < INVERTED_PROBABILITY
    x = np.stack([transform(vary(g, rng), o, v) for g, o, v in zip(greys, orientation, inverted)])
    return x[..., None].astype("float32") / 255.0, orientation, inverted.astype("float32")


def all_variants(smalls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image in every orientation, inverted and not: (N*10, s, s, 1) and labels."""
    xs, os_, vs = [], [], []
    for inverted in (False, True):
        for o in range(len(quality.ORIENTATIONS)):
            xs.append(np.stack([transform(s, o, inverted) for s in smalls]))
            os_.append(np.full(len(smalls), o))
            vs.append(np.full(len(smalls), float(inverted)))
    return (np.concatenate(xs)[..., None].astype("float32") / 255.0, np.concatenate(os_),
            np.concatenate(vs))


def threshold_for(scores: np.ndarray, target: float = config.QUALITY_FALSE_WARNING_TARGET,
                  floor: float = config.QUALITY_MIN_THRESHOLD) -> float:
    """The lowest threshold (not below ``floor``) at which at most ``target`` of ``scores``
    (each an untransformed image's probability for a transform) reach it."""
    allowed = int(np.floor(target * len(scores)))
    ranked = np.sort(np.asarray(scores, dtype="float64"))[::-1]
    above = float(np.nextafter(ranked[allowed], 1.0)) if allowed < len(ranked) else 0.0
    return float(min(max(floor, above), 1.0))


def warning_scores(orientation_probs: np.ndarray) -> np.ndarray:
    """Per image, the probability of its most likely non-upright orientation if that is the
    most likely one at all, else 0 (such an image gets no orientation warning at any threshold)."""
    k = orientation_probs.argmax(axis=1)
    return np.where(k != 0, orientation_probs.max(axis=1), 0.0)


def evaluate(orientation_probs: np.ndarray, inverted_probs: np.ndarray, orientation: np.ndarray,
             inverted: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Per transform (orientation x inverted): share whose findings are exactly right."""
    found = [quality.decide(o, v, thresholds) for o, v in zip(orientation_probs, inverted_probs)]
    out = {}
    for inv in (0.0, 1.0):
        for k, name in enumerate(quality.ORIENTATIONS):
            idx = np.flatnonzero((orientation == k) & (inverted == inv))
            expected = ([] if k == 0 else [name]) + ([quality.INVERTED] if inv else [])
            label = name if not inv else (quality.INVERTED if k == 0 else f"{name}+inverted")
            right = sum(found[i] == expected for i in idx)
            out[label] = {"n": int(len(idx)), "right": int(right),
                          "accuracy": round(right / max(len(idx), 1), 4)}
    return out


def train(data: Path, epochs: int = config.QUALITY_EPOCHS, out_dir: Path | None = None,
          seed: int = config.SEED) -> dict:
    """Fit, choose the epoch and thresholds on validation, save the network and its record."""
    import keras

    start = time.time()
    out_dir = Path(out_dir) if out_dir is not None else config.WEIGHTS_DIR
    splits = load_splits(data)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    print(f"decoding {len(splits['train'])} training and {len(splits['val'])} validation images")
    train_grey = decode_grey([s.path for s in splits["train"]])
    val_grey = decode_grey([s.path for s in splits["val"]])
    val_small = np.stack([shrink(g) for g in val_grey])
    val_x, val_o, val_v = all_variants(val_small)
    decoded_s = time.time() - start

    model = quality.build_network()
    steps = epochs * int(np.ceil(len(train_grey) / config.QUALITY_BATCH_SIZE))
    schedule = keras.optimizers.schedules.CosineDecay(config.QUALITY_LEARNING_RATE, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={"orientation": "sparse_categorical_crossentropy", "inverted": "binary_crossentropy"},
    )
    best_loss, best_epoch, best_weights, history = np.inf, -1, None, []
    for epoch in range(epochs):
        t0 = time.time()
        x, o, v = epoch_batch(train_grey, rng)
        fit = model.fit(x, {"orientation": o, "inverted": v}, epochs=1, verbose=0,
                        batch_size=config.QUALITY_BATCH_SIZE, shuffle=True)
        # Every other validation copy picks the epoch (half the cost); all set the thresholds.
        pred = model.predict(val_x[::2], batch_size=256, verbose=0)
        p_o, p_v, y_o, y_v = pred["orientation"], pred["inverted"][:, 0], val_o[::2], val_v[::2]
        val_loss = float(np.mean(-np.log(np.clip(p_o[np.arange(len(y_o)), y_o], 1e-7, 1)))
                         + np.mean(-np.log(np.clip(np.where(y_v > 0, p_v, 1 - p_v), 1e-7, 1))))
        accuracy = float(np.mean((p_o.argmax(1) == y_o) & ((p_v >= 0.5) == (y_v > 0))))
        history.append({"epoch": epoch + 1, "loss": round(float(fit.history["loss"][-1]), 4),
                        "val_loss": round(val_loss, 4), "val_accuracy": round(accuracy, 4),
                        "seconds": round(time.time() - t0, 1)})
        print(history[-1], flush=True)
        if val_loss < best_loss:
            best_loss, best_epoch, best_weights = val_loss, epoch + 1, model.get_weights()
    model.set_weights(best_weights)

    pred = model.predict(val_x, batch_size=256, verbose=0)
    p_o, p_v = pred["orientation"], pred["inverted"][:, 0]
    plain = (val_o == 0) & (val_v == 0)
    thresholds = {"orientation": threshold_for(warning_scores(p_o[plain])),
                  "inverted": threshold_for(p_v[plain])}
    per_transform = evaluate(p_o, p_v, val_o, val_v, thresholds)
    warned = [bool(quality.decide(o, v, thresholds)) for o, v in zip(p_o[plain], p_v[plain])]
    # The same untransformed validation images with acquisition variation (seeded).
    varied = np.stack([vary(g, np.random.default_rng(seed + i)) for i, g in enumerate(val_grey)])
    pv = model.predict(varied[..., None].astype("float32") / 255.0, batch_size=256, verbose=0)
    warned_varied = [bool(quality.decide(o, v, thresholds))
                     for o, v in zip(pv["orientation"], pv["inverted"][:, 0])]

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = quality.build_network()  # uncompiled: no optimizer state in the file
    clean.set_weights(model.get_weights())
    clean.save(out_dir / config.QUALITY_MODEL_FILE)
    record = {
        "data_fingerprint": fingerprint(splits["train"] + splits["val"]),
        "data": {"train": len(splits["train"]), "val": len(splits["val"]),
                 "test": "not read"},
        "input_size": config.QUALITY_INPUT_SIZE,
        "parameters": int(model.count_params()),
        "epochs": epochs,
        "best_epoch": best_epoch,
        "thresholds": thresholds,
        "false_warning_target": config.QUALITY_FALSE_WARNING_TARGET,
        "validation": {
            "per_transform": per_transform,
            "false_warning_rate_untransformed": round(float(np.mean(warned)), 4),
            "false_warnings_untransformed": int(np.sum(warned)),
            "false_warning_rate_untransformed_varied": round(float(np.mean(warned_varied)), 4),
            "n_untransformed": int(plain.sum()),
        },
        "history": history,
        "decode_seconds": round(decoded_s, 1),
        "training_seconds": round(time.time() - start, 1),
        "cpu_count": os.cpu_count(),
        "keras": keras.__version__,
    }
    artifacts.write_record(config.QUALITY_RECORD_FILE, record, out_dir)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.train_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR,
                        help="Kaggle-layout chest_xray folder (train/ is used, test/ is not)")
    parser.add_argument("--epochs", type=int, default=config.QUALITY_EPOCHS)
    parser.add_argument("--out", type=Path, default=None, help="weights folder to write to")
    args = parser.parse_args(argv)
    if problem := layout_problem(args.data):
        parser.error(problem)
    record = train(args.data, args.epochs, args.out)
    v = record["validation"]
    print(f"thresholds {record['thresholds']}; validation accuracy per transform:")
    for name, r in v["per_transform"].items():
        print(f"  {name:<22}{r['accuracy']:>8.1%}  (n={r['n']})")
    print(f"false warnings on untransformed validation images: "
          f"{v['false_warning_rate_untransformed']:.2%}; with acquisition variation "
          f"{v['false_warning_rate_untransformed_varied']:.2%}")
    print(f"training took {record['training_seconds'] / 60:.1f} minutes")


if __name__ == "__main__":
    main()
