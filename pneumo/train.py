"""Training CLI: ``python -m pneumo.train --data PATH [--epochs N] [--out weights/]``.

1. Decode every image once with the app's preprocessing (:func:`pneumo.images.load_image`).
2. Head-only phase: ImageNet Lite0 features are computed once (no augmentation) and the
   logistic head is fitted on them; its validation AUC is the frozen-feature baseline.
3. Fine-tuning: blocks from ``--finetune-from`` on are trained with BatchNorm frozen, class
   weights, radiograph-friendly augmentation (small rotation, shift, zoom, contrast and
   brightness; no flips: the heart is on the left), early stopping on validation AUC.
   Every epoch is checkpointed; ``--resume`` continues an interrupted run.
4. Platt calibration is fitted on validation logits and stored in the model's last layer.

Writes ``pneumo.keras``, ``history.csv`` and ``training.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumo import config
from pneumo.data import class_counts, fingerprint, load_arrays, load_splits
from pneumo.metrics import fit_platt, roc_auc
from pneumo.model import (
    backbone_layers,
    build_classifier,
    logit_model,
    set_calibration,
)

HISTORY_FIELDS = ["phase", "epoch", "loss", "auc", "val_loss", "val_auc", "lr", "seconds"]


def augmentation() -> keras.Sequential:
    """Mild, anatomy-preserving augmentation for chest radiographs (RGB 0-255 in and out)."""
    seed = config.SEED
    return keras.Sequential(
        [
            keras.layers.RandomRotation(8 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
        ],
        name="augmentation",
    )


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, train: bool) -> tf.data.Dataset:
    """Batches of (float32 RGB 0-255, label); shuffled and augmented for training."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels[:, None]))
    if train:
        ds = ds.shuffle(len(images), seed=config.SEED, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmentation() if train else None

    def prepare(x, y):
        x = tf.cast(x, tf.float32)
        if aug is not None:
            x = tf.clip_by_value(aug(x, training=True), 0.0, 255.0)
        return x, y

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 * n_class)."""
    n = len(labels)
    return {c: float(n / (2.0 * max(1, int((labels == c).sum())))) for c in (0, 1)}


def set_finetune_trainable(model: keras.Model, first_block: str) -> int:
    """Train backbone layers from ``first_block`` on, except BatchNorm; return trainable count."""
    trainable = False
    for layer in backbone_layers(model):
        if layer.name.startswith(first_block):
            trainable = True
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch during which ``minutes`` ran out."""

    def __init__(self, minutes: float | None, started: float):
        super().__init__()
        self.deadline = None if minutes is None else started + minutes * 60

    def on_epoch_end(self, epoch, logs=None):
        if self.deadline is not None and time.time() > self.deadline:
            print(f"\ntime budget reached after epoch {epoch + 1}; stopping")
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """Each epoch: append to history.csv, save last.keras, and best.keras when val AUC improves."""

    def __init__(self, out: Path, state: dict, started: float):
        super().__init__()
        self.out, self.state, self.started = out, state, started
        self.epoch_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {
            "phase": "finetune",
            "epoch": epoch + 1,
            "loss": logs.get("loss"),
            "auc": logs.get("auc"),
            "val_loss": logs.get("val_loss"),
            "val_auc": logs.get("val_auc"),
            "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "seconds": round(time.time() - self.epoch_started, 1),
        }
        append_history(self.out, row)
        ckpt = self.out / "checkpoints"
        if logs.get("val_auc", -1) > self.state.get("best_val_auc", -1):
            self.state.update(best_val_auc=float(logs["val_auc"]), best_epoch=epoch + 1)
            self.model.save(ckpt / "best.keras")
        self.model.save(ckpt / "last.keras")
        self.state["epochs_done"] = epoch + 1
        self.state["elapsed_seconds"] = self.state.get("elapsed_before", 0.0) + time.time() - self.started
        (ckpt / "state.json").write_text(json.dumps(self.state, indent=2))


def append_history(out: Path, row: dict) -> None:
    path = out / config.HISTORY_FILE
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def fit_head(model: keras.Model, x_train, y_train, x_val, y_val, epochs: int, batch_size: int,
             out: Path) -> float:
    """Fit the logit layer on frozen, cached Lite0 features; return the baseline val AUC."""
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    f_train = features.predict(x_train, batch_size=64, verbose=1)
    f_val = features.predict(x_val, batch_size=64, verbose=1)
    inp = keras.Input(f_train.shape[1:])
    drop = keras.layers.Dropout(config.DROPOUT_RATE)(inp)
    head = keras.layers.Dense(1)
    head_model = keras.Model(inp, keras.layers.Activation("sigmoid")(head(drop)))
    head_model.compile(keras.optimizers.Adam(config.HEAD_LEARNING_RATE), "binary_crossentropy",
                       metrics=[keras.metrics.AUC(name="auc")])
    for epoch in range(epochs):
        started = time.time()
        h = head_model.fit(f_train, y_train, batch_size=batch_size, epochs=1, verbose=0,
                           class_weight=class_weights(y_train), validation_data=(f_val, y_val))
        row = {k: float(v[0]) for k, v in h.history.items()}
        append_history(out, {"phase": "head", "epoch": epoch + 1, "lr": config.HEAD_LEARNING_RATE,
                             "seconds": round(time.time() - started, 1), **row})
    model.get_layer(config.LOGIT_LAYER).set_weights(head.get_weights())
    baseline = roc_auc(y_val, head_model.predict(f_val, verbose=0))
    print(f"head-only (frozen ImageNet features) val AUC = {baseline:.4f}")
    return baseline


def train(args: argparse.Namespace) -> dict:
    started = time.time()
    keras.utils.set_random_seed(config.SEED)
    out: Path = args.out
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.data)
    if args.limit:
        splits = {k: _limit(v, args.limit) for k, v in splits.items()}
    print({k: class_counts(v) for k, v in splits.items()})
    x_train, y_train = load_arrays(splits["train"])
    x_val, y_val = load_arrays(splits["val"])

    state_path = out / "checkpoints" / "state.json"
    state = json.loads(state_path.read_text()) if args.resume and state_path.exists() else {}
    if state.get("epochs_done"):
        print(f"resuming after fine-tuning epoch {state['epochs_done']}")
        model = keras.saving.load_model(out / "checkpoints" / "last.keras")
        baseline = state["head_val_auc"]
        state["elapsed_before"] = state.get("elapsed_seconds", 0.0)
    else:
        (out / config.HISTORY_FILE).unlink(missing_ok=True)
        model = build_classifier(args.imagenet)
        for layer in backbone_layers(model):
            layer.trainable = False
        baseline = fit_head(model, x_train, y_train, x_val, y_val, args.head_epochs,
                            args.batch_size, out)
        state = {"head_val_auc": baseline, "epochs_done": 0}
        n_trainable = set_finetune_trainable(model, args.finetune_from)
        print(f"fine-tuning {n_trainable:,} weights from {args.finetune_from} on")
        steps = args.epochs * int(np.ceil(len(x_train) / args.batch_size))
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.05)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc")],
        )

    model.fit(
        make_dataset(x_train, y_train, args.batch_size, train=True),
        validation_data=make_dataset(x_val, y_val, 64, train=False),
        epochs=args.epochs,
        initial_epoch=state["epochs_done"],
        class_weight=class_weights(y_train),
        callbacks=[
            Checkpoint(out, state, started),
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max",
                                          patience=config.EARLY_STOPPING_PATIENCE),
            TimeBudget(args.max_minutes, started),
        ],
        verbose=args.verbose,
    )

    best = out / "checkpoints" / "best.keras"
    if best.exists():
        model = keras.saving.load_model(best, compile=False)
    val_logits = logit_model(model).predict(x_val, batch_size=64, verbose=0).ravel()
    scale, bias = fit_platt(val_logits, y_val)
    set_calibration(model, scale, bias)
    model.save(out / config.MODEL_FILE)

    report = {
        "model": "EfficientNet-Lite0 (Keras builder, ImageNet init) + logistic head + Platt",
        "config": {
            "image_size": config.IMAGE_SIZE, "batch_size": args.batch_size,
            "head_epochs": args.head_epochs, "max_finetune_epochs": args.epochs,
            "finetune_from": args.finetune_from, "learning_rate": args.lr,
            "early_stopping_patience": config.EARLY_STOPPING_PATIENCE, "seed": config.SEED,
            "val_fraction": config.VAL_FRACTION, "dropout": config.DROPOUT_RATE,
            "class_weights": class_weights(y_train), "limit": args.limit,
        },
        "splits": {k: class_counts(v) for k, v in splits.items()},
        "patients": {k: len({s.patient for s in v}) for k, v in splits.items()},
        "head_only_val_auc": baseline,
        "best_epoch": state.get("best_epoch"),
        "best_val_auc": state.get("best_val_auc"),
        "finetune_epochs_run": state.get("epochs_done"),
        "calibration": {"method": "platt", "scale": scale, "bias": bias},
        "duration_minutes": round(
            (state.get("elapsed_before", 0.0) + time.time() - started) / 60, 1),
        "versions": versions(),
        "data_fingerprint": fingerprint([s for v in splits.values() for s in v]),
        "data_path": str(args.data),
    }
    (out / config.TRAINING_FILE).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("best_epoch", "best_val_auc", "head_only_val_auc",
                                             "duration_minutes")}))
    return report


def versions() -> dict[str, str]:
    import cv2
    import PIL

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "pillow": PIL.__version__}


def _limit(samples, n):
    """At most n samples per class (for smoke runs)."""
    kept, seen = [], {0: 0, 1: 0}
    for s in samples:
        if seen[s.label] < n:
            kept.append(s)
            seen[s.label] += 1
    return kept


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train pneumo's EfficientNet-Lite0 classifier.")
    p.add_argument("--data", type=Path, required=True, help="Kaggle-layout chest_xray folder")
    p.add_argument("--out", type=Path, default=config.WEIGHTS_DIR)
    p.add_argument("--epochs", type=int, default=config.FINETUNE_EPOCHS, help="fine-tuning epochs")
    p.add_argument("--head-epochs", type=int, default=config.HEAD_EPOCHS,
                   help="epochs of the head on cached features (cheap)")
    p.add_argument("--finetune-from", default="block3a", help="first backbone block to train")
    p.add_argument("--lr", type=float, default=config.FINETUNE_LEARNING_RATE)
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--imagenet", type=Path, default=config.weights_path(config.IMAGENET_NOTOP_FILE))
    p.add_argument("--max-minutes", type=float, help="stop fine-tuning after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.keras")
    p.add_argument("--limit", type=int, help="at most N images per class and split (smoke runs)")
    p.add_argument("--verbose", type=int, default=1, help="Keras verbosity: 1 progress bar, 2 lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
