"""Lung-segmenter training CLI: ``python -m pneumo.train_lungs --data PATH/lung_masks``.

Fits :func:`pneumo.models.lungs.build_segmenter` on the pairs that may be fitted on
(``kermany_train_*`` and the CC BY ``ccxr_*``), holding out a patient-grouped share of them to
choose the checkpoint (best validation Dice). Image and mask go through the same geometric
augmentation together. Afterwards Dice is measured, never fitted, on the 617 pediatric test
masks and on the adult pairs that may not be fitted on. Writes ``lungs.keras`` and
``lungs.json`` (data fingerprint, ids used, Dice per split, speed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumo import config
from pneumo.data.lung_masks import (
    fingerprint,
    layout_problem,
    load_pairs,
    read_pairs,
    resize_mask,
    split_for_fitting,
)
from pneumo.evaluation import artifacts
from pneumo.models.lungs import build_segmenter, clean_mask, dice


def geometric_augmentation() -> keras.Sequential:
    """Applied to image and mask stacked as one 4-channel tensor, so they stay aligned."""
    seed = config.SEED
    return keras.Sequential([
        keras.layers.RandomRotation(12 / 360, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom((-0.2, 0.2), (-0.2, 0.2), fill_mode="constant", seed=seed + 2),
    ], name="geometry")


def photometric_augmentation() -> keras.Sequential:
    seed = config.SEED + 10
    return keras.Sequential([
        keras.layers.RandomContrast(0.3, value_range=(0, 255), seed=seed),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 1),
    ], name="photometric")


def make_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, train: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((images, masks[..., None].astype("float32")))
    if train:
        ds = ds.shuffle(len(images), seed=config.SEED, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if train:
        geometry, photometric = geometric_augmentation(), photometric_augmentation()

        def augment(x, y):
            both = geometry(tf.concat([tf.cast(x, tf.float32), y * 255.0], axis=-1), training=True)
            x = tf.clip_by_value(photometric(both[..., :3], training=True), 0.0, 255.0)
            return x, tf.cast(both[..., 3:] >= 127.5, tf.float32)

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(2)


def dice_loss(y_true, y_pred):
    inter = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
    total = tf.reduce_sum(y_true + y_pred, axis=[1, 2, 3])
    return 1.0 - (2.0 * inter + 1.0) / (total + 1.0)


def bce_dice_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true, y_pred, axis=[1, 2, 3]) + dice_loss(y_true, y_pred)


def dice_scores(model: keras.Model, images: np.ndarray, masks: np.ndarray,
                size: int | None = None) -> np.ndarray:
    """Dice of the cleaned predicted masks against ``masks`` (at ``size`` if given)."""
    probs = model.predict(images.astype("float32"), batch_size=32, verbose=0)[..., 0]
    scores = []
    for p, m in zip(probs, masks):
        pred = clean_mask(p)
        if size is not None:
            pred, m = resize_mask(pred, size, size), resize_mask(m, size, size)
        scores.append(dice(pred, m))
    return np.array(scores)


def summarize(scores: np.ndarray) -> dict:
    return {"n": int(len(scores)), "mean": float(scores.mean()), "median": float(np.median(scores)),
            "p5": float(np.percentile(scores, 5)), "min": float(scores.min())}


def seconds_per_image(model: keras.Model, images: np.ndarray, repeats: int = 20) -> float:
    """p50 of one-image calls through a traced graph, post-processing included."""
    from pneumo.models.lungs import LungSegmenter

    seg = LungSegmenter(model)
    x = images[:1].astype("float32")
    seg.fields(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        seg.fields(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


class BestDice(keras.callbacks.Callback):
    """Validation Dice (cleaned masks) each epoch; keep the best weights."""

    def __init__(self, images, masks, path: Path):
        super().__init__()
        self.images, self.masks, self.path = images, masks, path
        self.best, self.best_epoch, self.history = -1.0, 0, []

    def on_epoch_end(self, epoch, logs=None):
        score = float(dice_scores(self.model, self.images, self.masks).mean())
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
                             "val_dice": score})
        print(f" val Dice {score:.4f}")
        if score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            self.model.save(self.path)


def train(args: argparse.Namespace) -> dict:
    started = time.time()
    keras.utils.set_random_seed(config.SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(args.data)
    fit_train, fit_val = split_for_fitting(pairs)
    if args.limit:
        fit_train, fit_val = fit_train[: args.limit], fit_val[: max(2, args.limit // 4)]
    print(f"fitting on {len(fit_train)} pairs, choosing on {len(fit_val)}")
    x_train, m_train = load_pairs(fit_train)
    x_val, m_val = load_pairs(fit_val)

    model = build_segmenter()
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps, 0.02)),
                  loss=bce_dice_loss)
    best_path = args.out / (config.LUNG_MODEL_FILE + ".best.keras")
    best = BestDice(x_val, m_val, best_path)
    model.fit(make_dataset(x_train, m_train, args.batch_size, train=True), epochs=args.epochs,
              callbacks=[best], verbose=args.verbose)
    model = keras.saving.load_model(best_path, compile=False)
    model.save(args.out / config.LUNG_MODEL_FILE)
    best_path.unlink()

    record = {
        "model": f"U-Net (4 levels, base {config.LUNG_BASE_FILTERS} filters) at "
                 f"{config.LUNG_INPUT_SIZE} px inside, on the classifier's 224 px input",
        "parameters": int(model.count_params()),
        "epochs": args.epochs, "best_epoch": best.best_epoch, "learning_rate": args.lr,
        "batch_size": args.batch_size, "seed": config.SEED,
        "history": best.history,
        "fit_ids": sorted(p.id for p in fit_train),
        "val_ids": sorted(p.id for p in fit_val),
        "data_fingerprint": fingerprint(fit_train + fit_val),
        "data_path": str(args.data),
        "dice": {"train": summarize(dice_scores(model, x_train, m_train)),
                 "val": summarize(dice_scores(model, x_val, m_val))},
        "dice_rule": "cleaned mask (two largest components, holes filled) against the reference "
                     "mask, both at the data set's own 256 px for the measurement-only groups",
        "seconds_per_image": seconds_per_image(model, x_val),
    }
    if not args.limit:
        for name, group, may_fit in (("pediatric_test", "kermany_test", False),
                                     ("adult_held_out", "ccxr", False)):
            chosen = [p for p in pairs if p.group == group and p.may_fit == may_fit]
            if chosen:
                x, m = load_pairs(chosen)
                record["dice"][name] = summarize(dice_scores(model, x, m, size=256))
    record["duration_minutes"] = round((time.time() - started) / 60, 1)
    artifacts.write_record(config.LUNG_RECORD_FILE, record, args.out)
    print(json.dumps(record["dice"], indent=2), f"\n{record['seconds_per_image'] * 1000:.1f} ms/image")
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pneumo.train_lungs", description="Train pneumo's lung-field segmenter.")
    p.add_argument("--data", type=Path, required=True,
                   help="lung_masks folder (MANIFEST.csv, images/, masks/)")
    p.add_argument("--out", type=Path, default=config.WEIGHTS_DIR)
    p.add_argument("--epochs", type=int, default=config.LUNG_EPOCHS)
    p.add_argument("--lr", type=float, default=config.LUNG_LEARNING_RATE)
    p.add_argument("--batch-size", type=int, default=config.LUNG_BATCH_SIZE)
    p.add_argument("--limit", type=int, help="at most N training pairs (smoke runs)")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
    if problem := layout_problem(args.data):
        p.error(problem)
    return args


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
