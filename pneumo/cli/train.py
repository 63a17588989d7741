"""Training CLI: ``python -m pneumo.train --data PATH [--epochs N] [--out weights/]``.

1. Decode every image once with the app's preprocessing (:func:`pneumo.io.images.load_image`).
2. Head-only phase: ImageNet Lite0 features are computed once (no augmentation) and the
   logistic head is fitted on them; its validation AUC is the frozen-feature baseline.
3. Lung fields: the lung-field segmenter (``weights/lungs.keras``) draws a mask for every
   training and validation image (never a test mask).
4. Fine-tuning: blocks from ``--finetune-from`` on are trained with BatchNorm frozen, class
   weights, augmentation against the film's shortcuts (:mod:`pneumo.data.augment`: zoom-in crops,
   translations, rotation, resizing, blur/sharpen, JPEG re-encoding or none, exposure, noise;
   no flips) and a penalty on the share of the class-activation map that lies outside the
   lungs (``--lung-penalty``). The checkpoint is chosen by validation log loss (validation
   AUC is saturated on this data), and the average of the last epochs' weights is kept instead
   when its validation loss is lower. Every epoch is checkpointed; ``--resume`` continues.
5. Platt calibration is fitted on validation logits (originals + training-augmented copies)
   and stored in the model's last layer.

Writes ``pneumo.keras``, ``history.csv`` and ``training.json`` to ``--out``.

Issue #25's ensemble: ``--members K`` trains K members of the recipe (the declared seeds,
failed members replaced by spares) into ``OUT/members/seed_S/`` and joins them;
``--ensemble-of DIR ...`` joins members trained already. The joined model
(:mod:`pneumo.models.ensemble`) gets its own Platt calibration by :func:`fit_calibration`, and its
``training.json`` lists the members.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pneumo import config
from pneumo.data.augment import augment_example, flip_together, mild_reencoding
from pneumo.data.splits import class_counts, fingerprint, layout_problem, load_arrays, load_splits
from pneumo.evaluation import artifacts
from pneumo.evaluation.metrics import fit_platt, log_loss, roc_auc
from pneumo.models.classifier import (
    backbone_layers,
    build_classifier,
    logit_model,
    model_problem,
    set_calibration,
)

CAM_MASS_EPSILON = 1.0  # added to the CAM's total mass so an all-negative map has no penalty


def make_dataset(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, batch_size: int,
                 seed: int = config.SEED, views: int = 1, mild_second_view: bool = False,
                 hflip: float = 0.0) -> tf.data.Dataset:
    """Training batches of ((float32 RGB 0-255, lung mask 0/1), label), shuffled and augmented.

    With ``views=2`` every image appears twice in its batch as neighbours (rows 2i and 2i+1),
    for the consistency or stability term: augmented independently, or (``mild_second_view``)
    the second row is the first one mildly re-encoded (:func:`mild_reencoding`). A batch then
    holds ``batch_size / 2`` images and the data set repeats. ``hflip``: probability of a
    left-right mirror of image and mask (:func:`pneumo.data.augment.flip_together`); both views
    of an image share it.
    """
    size = config.IMAGE_SIZE
    ds = tf.data.Dataset.from_tensor_slices((images, masks[..., None], labels[:, None]))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

    def prepare(x, m, y):
        if views == 1:
            x, m = augment_example(x, m, hflip)
            return (x, m), y
        if hflip > 0:  # both views of one image mirrored alike
            x, m = flip_together(x, m, hflip)
        xa, ma = augment_example(x, m)
        xb, mb = mild_reencoding(xa, ma) if mild_second_view else augment_example(x, m)
        return (tf.stack([xa, xb]), tf.stack([ma, mb])), tf.stack([y, y])

    def flatten(xm, y):
        x, m = xm
        x = tf.reshape(x, [-1, size, size, 3])
        return (x, tf.reshape(m, [-1, size, size, 1])), tf.reshape(y, [-1, 1])

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(max(1, batch_size // views))
    if views > 1:
        ds = ds.map(flatten).repeat()
    return ds.prefetch(2)


def bernoulli_jsd(logit_a: tf.Tensor, logit_b: tf.Tensor) -> tf.Tensor:
    """Jensen-Shannon divergence (nats) between the Bernoulli outputs of two logits, elementwise.

    Bounded by log 2, and about p(1-p)(a-b)^2/8 for close logits: it weighs disagreement where
    the decision is uncertain and lets confident outputs be (unlike a squared logit difference).
    """
    def entropy(logit):  # of Bernoulli(sigmoid(logit)), stable for large |logit|
        p = tf.sigmoid(logit)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=logit)

    p_mid = (tf.sigmoid(logit_a) + tf.sigmoid(logit_b)) / 2.0
    mixed = -(p_mid * tf.math.log(p_mid + 1e-7) + (1.0 - p_mid) * tf.math.log(1.0 - p_mid + 1e-7))
    return tf.maximum(mixed - (entropy(logit_a) + entropy(logit_b)) / 2.0, 0.0)


def cam_outside_share(features: tf.Tensor, kernel: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Per image: share of the positive class-activation map outside the lungs.

    ``features`` (N, h, w, K) last feature map, ``kernel`` (K, 1) the logit layer's weights,
    ``masks`` (N, H, W, 1) lung masks 0/1 at the input size (pooled to h x w).
    """
    cam = tf.nn.relu(tf.einsum("nhwk,ko->nhw", features, kernel))
    pool = masks.shape[1] // features.shape[1]
    lungs = tf.nn.avg_pool2d(masks, pool, pool, "VALID")[..., 0]
    return tf.reduce_sum(cam * (1.0 - lungs), axis=[1, 2]) / (
        tf.reduce_sum(cam, axis=[1, 2]) + CAM_MASS_EPSILON)


class LungGuidedTraining(keras.Model):
    """Fine-tunes a classifier on class-weighted log loss + ``penalty`` x CAM share outside lungs.

    Optional two-view terms (batches from ``make_dataset(views=2)``): ``consistency`` x squared
    logit difference, or ``stability`` x :func:`bernoulli_jsd`; the stability weight lives in
    ``stability_weight`` so that :class:`StabilityWarmup` can switch it on after the first epoch.
    """

    def __init__(self, classifier: keras.Model, weights: dict[int, float], penalty: float,
                 consistency: float = 0.0, stability: float = 0.0):
        super().__init__()
        self.consistency = float(consistency)
        self.stability = float(stability)
        self.stability_weight = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.classifier = classifier
        self.parts = keras.Model(classifier.input, [classifier.get_layer(config.LOGIT_LAYER).output,
                                                    classifier.get_layer(config.CAM_LAYER).output])
        self.class_weight_values = (float(weights[0]), float(weights[1]))
        self.penalty = float(penalty)
        self.auc = keras.metrics.AUC(name="auc")
        self.means = {k: keras.metrics.Mean(name=k) for k in ("loss", "bce", "outside", "consistency")}

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    @property
    def metrics(self):
        return [*self.means.values(), self.auc]

    def train_step(self, data):
        (x, masks), y = data
        w0, w1 = self.class_weight_values
        weights = y[:, 0] * w1 + (1.0 - y[:, 0]) * w0
        variables = self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            logit, features = self.parts(x, training=True)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit)[:, 0]
            bce = tf.reduce_sum(bce * weights) / tf.reduce_sum(weights)
            kernel = self.classifier.get_layer(config.LOGIT_LAYER).kernel
            outside = tf.reduce_mean(cam_outside_share(features, kernel, masks))
            loss = bce + self.penalty * outside
            consistency = tf.constant(0.0)
            if self.consistency > 0:  # rows 2i and 2i+1 are two views of one image
                pairs = tf.reshape(logit[:, 0], [-1, 2])
                consistency = tf.reduce_mean(tf.square(pairs[:, 0] - pairs[:, 1]))
                loss = loss + self.consistency * consistency
            elif self.stability > 0:  # row 2i+1 is row 2i mildly re-encoded
                pairs = tf.reshape(logit[:, 0], [-1, 2])
                consistency = tf.reduce_mean(bernoulli_jsd(pairs[:, 0], pairs[:, 1]))
                loss = loss + self.stability_weight * consistency
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for name, value in (("loss", loss), ("bce", bce), ("outside", outside),
                            ("consistency", consistency)):
            self.means[name].update_state(value)
        self.auc.update_state(y, tf.sigmoid(logit))
        return {m.name: m.result() for m in self.metrics}


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


class StabilityWarmup(keras.callbacks.Callback):
    """The stability term is off in the first ``config.STABILITY_FROM_EPOCH - 1`` epochs, then on."""

    def __init__(self, trainer: LungGuidedTraining):
        super().__init__()
        self.trainer = trainer

    def on_epoch_begin(self, epoch, logs=None):
        on = epoch + 1 >= config.STABILITY_FROM_EPOCH
        self.trainer.stability_weight.assign(self.trainer.stability if on else 0.0)


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch during which ``minutes`` ran out."""

    def __init__(self, minutes: float | None, started: float):
        super().__init__()
        self.deadline = None if minutes is None else started + minutes * 60

    def on_epoch_end(self, epoch, logs=None):
        if self.deadline is not None and time.time() > self.deadline:
            print(f"\ntime budget reached after epoch {epoch + 1}; stopping")
            self.model.stop_training = True


class ValidationScorer:
    """Validation log loss, AUC and CAM share outside the lungs of a classifier (one traced graph)."""

    def __init__(self, classifier: keras.Model, images: np.ndarray, masks: np.ndarray,
                 labels: np.ndarray):
        self.images, self.labels = images, labels
        self.masks = masks[..., None].astype("float32")
        parts = keras.Model(classifier.input, [classifier.get_layer(config.LOGIT_LAYER).output,
                                               classifier.get_layer(config.CAM_LAYER).output])
        kernel = classifier.get_layer(config.LOGIT_LAYER).kernel

        def run(x, m):
            logit, features = parts(x, training=False)
            return logit[:, 0], cam_outside_share(features, kernel, m)

        self._run = tf.function(run)

    def __call__(self, batch_size: int = 64) -> dict[str, float]:
        logits, outside = [], []
        for i in range(0, len(self.images), batch_size):
            lo, out = self._run(tf.constant(self.images[i:i + batch_size], tf.float32),
                                tf.constant(self.masks[i:i + batch_size]))
            logits.append(lo.numpy())
            outside.append(out.numpy())
        logit = np.concatenate(logits)
        return {"val_loss": log_loss(self.labels, 1.0 / (1.0 + np.exp(-logit))),
                "val_auc": roc_auc(self.labels, logit),
                "val_outside": float(np.mean(np.concatenate(outside)))}


class Checkpoint(keras.callbacks.Callback):
    """Each epoch: score validation, append to history.csv, save last.keras and the epoch's
    weights (for averaging), and best.keras when the validation log loss improves."""

    def __init__(self, out: Path, state: dict, started: float, scorer: ValidationScorer,
                 classifier: keras.Model):
        super().__init__()
        self.out, self.state, self.started = out, state, started
        self.scorer, self.classifier = scorer, classifier
        self.epoch_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs.update(self.scorer())
        row = {"phase": "finetune", "epoch": epoch + 1,
               **{k: float(logs[k]) for k in artifacts.HISTORY_FIELDS if k in logs},
               "loss": float(logs["bce"]),  # comparable with the head phase and val_loss
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": round(time.time() - self.epoch_started, 1)}
        artifacts.append_history(row, self.out)
        print(f"\nepoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                  if isinstance(v, float)))
        ckpt = self.out / "checkpoints"
        if logs["val_loss"] < self.state.get("best_val_loss", np.inf):
            self.state.update(best_val_loss=float(logs["val_loss"]), best_val_auc=float(logs["val_auc"]),
                              best_epoch=epoch + 1)
            self.classifier.save(ckpt / "best.keras")
        self.classifier.save(ckpt / "last.keras")
        self.classifier.save_weights(ckpt / f"epoch{epoch + 1}.weights.h5")
        self.state["epochs_done"] = epoch + 1
        self.state["elapsed_seconds"] = self.state.get("elapsed_before", 0.0) + time.time() - self.started
        (ckpt / "state.json").write_text(json.dumps(self.state, indent=2))
        if epoch + 1 - self.state["best_epoch"] >= config.EARLY_STOPPING_PATIENCE:
            print(f"\nno validation-loss improvement for {config.EARLY_STOPPING_PATIENCE} epochs; stopping")
            self.model.stop_training = True


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
        artifacts.append_history({"phase": "head", "epoch": epoch + 1,
                                  "lr": config.HEAD_LEARNING_RATE,
                                  "seconds": round(time.time() - started, 1), **row}, out)
    model.get_layer(config.LOGIT_LAYER).set_weights(head.get_weights())
    baseline = roc_auc(y_val, head_model.predict(f_val, verbose=0))
    print(f"head-only (frozen ImageNet features) val AUC = {baseline:.4f}")
    return baseline


def arrays_key(splits: dict, lungs_path: Path) -> str:
    """What the decoded-image cache was made from: the train and validation files, the segmenter."""
    return fingerprint(splits["train"] + splits["val"])[:16] + "-" + \
        hashlib.sha256(Path(lungs_path).read_bytes()).hexdigest()[:16]


def cached_arrays(out: Path, splits: dict, lungs_path: Path) -> dict[str, np.ndarray]:
    """Decoded train/val images, labels and segmenter lung masks, cached in checkpoints/."""
    from pneumo.models.lungs import LungSegmenter

    cache = out / "checkpoints" / "arrays.npz"
    key = arrays_key(splits, lungs_path)
    if cache.exists():
        with np.load(cache) as f:
            if str(f["key"]) == key:
                print(f"decoded images and lung masks from {cache}")
                return {k: f[k] for k in f.files}
    segmenter = LungSegmenter.load(lungs_path)
    arrays = {"key": np.array(key)}
    for split in ("train", "val"):
        images, labels = load_arrays(splits[split])
        masks = np.stack([f.mask for f in segmenter.fields(images)]) if len(images) else \
            np.zeros((0, config.IMAGE_SIZE, config.IMAGE_SIZE), bool)
        arrays.update({f"x_{split}": images, f"y_{split}": labels, f"m_{split}": masks.astype("uint8")})
    cache.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no checkpoints/
    np.savez(cache, **arrays)
    return arrays


def average_weights(model: keras.Model, files: list[Path]) -> None:
    """Set ``model``'s weights to the mean of the saved weight files."""
    total = None
    for path in files:
        model.load_weights(path)
        weights = [w.astype("float64") for w in model.get_weights()]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([t / len(files) for t in total])


def train(args: argparse.Namespace) -> dict:
    started = time.time()
    keras.utils.set_random_seed(args.seed)
    out: Path = args.out
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.data)
    if args.limit:
        splits = {k: _limit(v, args.limit) for k, v in splits.items()}
    print({k: class_counts(v) for k, v in splits.items()})
    a = cached_arrays(getattr(args, "arrays_dir", None) or out, splits, args.lungs)
    x_train, y_train, m_train = a["x_train"], a["y_train"], a["m_train"]
    x_val, y_val, m_val = a["x_val"], a["y_val"], a["m_val"]
    if args.consistency > 0 and args.stability > 0:
        raise SystemExit("--consistency and --stability are two kinds of one term: give --stability 0 "
                         "with --consistency")
    views = 2 if args.consistency > 0 or args.stability > 0 else 1
    # An epoch is one pass over the training images (two-view batches hold half as many).
    steps_per_epoch = int(np.ceil(len(x_train) / max(1, args.batch_size // views)))

    state_path = ckpt / "state.json"
    state = json.loads(state_path.read_text()) if args.resume and state_path.exists() else {}
    if state.get("epochs_done"):
        print(f"resuming after fine-tuning epoch {state['epochs_done']}")
        model = keras.saving.load_model(ckpt / "last.keras", compile=False)
        baseline = state["head_val_auc"]
        state["elapsed_before"] = state.get("elapsed_seconds", 0.0)
    else:
        artifacts.history_file(out).unlink(missing_ok=True)
        for old in ckpt.glob("epoch*.weights.h5"):
            old.unlink()
        model = build_classifier(args.imagenet)
        for layer in backbone_layers(model):
            layer.trainable = False
        baseline = fit_head(model, x_train, y_train, x_val, y_val, args.head_epochs,
                            args.batch_size, out)
        state = {"head_val_auc": baseline, "epochs_done": 0}
    n_trainable = set_finetune_trainable(model, args.finetune_from)
    print(f"fine-tuning {n_trainable:,} weights from {args.finetune_from} on")
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * steps_per_epoch, alpha=0.05)
    trainer = LungGuidedTraining(model, class_weights(y_train), args.lung_penalty, args.consistency,
                                 args.stability)
    trainer.compile(optimizer=keras.optimizers.Adam(schedule))
    trainer.optimizer.build(model.trainable_variables)
    trainer.optimizer.iterations.assign(state["epochs_done"] * steps_per_epoch)
    scorer = ValidationScorer(model, x_val, m_val, y_val)

    if state["epochs_done"] < args.epochs:
        trainer.fit(
            make_dataset(x_train, m_train, y_train, args.batch_size,
                         seed=args.seed + state["epochs_done"], views=views,
                         mild_second_view=args.stability > 0, hflip=args.hflip),
            epochs=args.epochs,
            steps_per_epoch=steps_per_epoch if views > 1 else None,
            initial_epoch=state["epochs_done"],
            callbacks=[StabilityWarmup(trainer), Checkpoint(out, state, started, scorer, model),
                       TimeBudget(args.max_minutes, started)],
            verbose=args.verbose,
        )

    # The checkpoint: the best epoch by validation log loss, or the average of the last epochs'
    # weights when that has a lower validation log loss.
    best = keras.saving.load_model(ckpt / "best.keras", compile=False)
    choice = {"best_epoch": state.get("best_epoch"), "best_epoch_val_loss": state.get("best_val_loss")}
    done = state["epochs_done"]
    last = [ckpt / f"epoch{e}.weights.h5" for e in range(max(1, done - args.average_last + 1), done + 1)]
    last = [p for p in last if p.exists()]
    if len(last) >= 2:
        averaged = keras.saving.load_model(ckpt / "last.keras", compile=False)
        average_weights(averaged, last)
        avg_scores = ValidationScorer(averaged, x_val, m_val, y_val)()
        choice.update(averaged_epochs=[int(p.name[5:].split(".")[0]) for p in last],
                      averaged_val_loss=avg_scores["val_loss"], averaged_val_auc=avg_scores["val_auc"])
        if avg_scores["val_loss"] < state.get("best_val_loss", np.inf):
            best = averaged
    choice["chosen"] = "averaged" if best is not None and "averaged_val_loss" in choice and \
        choice["averaged_val_loss"] < (choice["best_epoch_val_loss"] or np.inf) else "best_epoch"
    model = best
    calibration = fit_calibration(model, x_val, m_val, y_val)
    model.save(out / config.MODEL_FILE)
    final = ValidationScorer(model, x_val, m_val, y_val)()

    report = {
        "model": "EfficientNet-Lite0 (Keras builder, ImageNet init) + logistic head + Platt",
        "config": {
            "image_size": config.IMAGE_SIZE, "batch_size": args.batch_size,
            "head_epochs": args.head_epochs, "max_finetune_epochs": args.epochs,
            "finetune_from": args.finetune_from, "learning_rate": args.lr,
            "early_stopping_patience": config.EARLY_STOPPING_PATIENCE, "seed": args.seed,
            "split_seed": config.SEED,
            "val_fraction": config.VAL_FRACTION, "dropout": config.DROPOUT_RATE,
            "class_weights": class_weights(y_train), "limit": args.limit,
            "lung_penalty": args.lung_penalty, "average_last": args.average_last,
            "consistency": args.consistency, "stability": args.stability, "hflip": args.hflip,
            "stability_from_epoch": config.STABILITY_FROM_EPOCH,
            "augmentation": "pneumo.data.augment (crop 50-100 % area, shift, rotation, resize, blur/"
                            "sharpen, JPEG q30-95 or none, gamma/contrast/brightness, noise)",
            "checkpoint_rule": "lowest validation log loss; average of the last epochs if lower",
        },
        "splits": {k: class_counts(v) for k, v in splits.items()},
        "patients": {k: len({s.patient for s in v}) for k, v in splits.items()},
        "head_only_val_auc": baseline,
        "checkpoint": choice,
        "best_epoch": state.get("best_epoch"),
        "best_val_loss": state.get("best_val_loss"),
        "best_val_auc": state.get("best_val_auc"),
        "final_val": final,
        "finetune_epochs_run": state.get("epochs_done"),
        "calibration": calibration,
        "duration_minutes": round(
            (state.get("elapsed_before", 0.0) + time.time() - started) / 60, 1),
        "versions": versions(),
        "data_fingerprint": fingerprint([s for v in splits.values() for s in v]),
        "data_path": str(args.data),
    }
    artifacts.write_training(report, out)
    print(json.dumps({k: report[k] for k in ("checkpoint", "final_val", "head_only_val_auc",
                                             "duration_minutes")}))
    return report


def fit_calibration(model: keras.Model, x_val: np.ndarray, m_val: np.ndarray, y_val: np.ndarray,
                    views: int = config.CALIBRATION_AUGMENTED_VIEWS) -> dict:
    """Fit Platt on the validation logits (originals + ``views`` augmented copies) and store it.

    Returns the training record's ``calibration`` entry.
    """
    logits = logit_model(model)
    z = [logits.predict(x_val, batch_size=64, verbose=0).ravel()]
    tf.random.set_seed(config.SEED)
    for _ in range(views):
        copies = tf.data.Dataset.from_tensor_slices((x_val, m_val[..., None])) \
            .map(augment_example).map(lambda image, mask: image).batch(64)
        z.append(logits.predict(copies, verbose=0).ravel())
    y = np.concatenate([y_val] * len(z))
    scale, bias = fit_platt(np.concatenate(z), y)
    set_calibration(model, scale, bias)
    p_original = 1.0 / (1.0 + np.exp(-(scale * z[0] + bias)))
    return {"method": "platt", "scale": scale, "bias": bias, "augmented_views": views,
            "fitted_on": f"{len(y_val)} validation images x {len(z)} (original + {views} "
                         "training-augmented copies)",
            "val_log_loss_original_images": log_loss(y_val, p_original)}


def recalibrate(args: argparse.Namespace) -> dict:
    """Refit only the calibration of the trained model in ``args.out`` (no training)."""
    splits = load_splits(args.data)
    if args.limit:
        splits = {k: _limit(v, args.limit) for k, v in splits.items()}
    a = cached_arrays(args.out, splits, args.lungs)
    path = args.out / config.MODEL_FILE
    model = keras.saving.load_model(path, compile=False)
    calibration = fit_calibration(model, a["x_val"], a["m_val"], a["y_val"])
    model.save(path)
    record = artifacts.read_training_dict(args.out)
    calibration["previous"] = record.get("calibration")
    record["calibration"] = calibration
    artifacts.write_training(record, args.out)
    print(json.dumps(calibration))
    return calibration


# --- issue #25's ensemble: members trained and joined as one model ------------------------------

def member_folder(out: Path, seed: int) -> Path:
    """Where ``--members`` trains the member of seed ``seed``: OUT/members/seed_S/."""
    return out / config.ENSEMBLE_MEMBERS_DIR / f"seed_{seed}"


def member_finished(folder: Path) -> bool:
    """A member folder with its model and record, whose fine-tuning ran all its epochs or
    stopped early (a member the time budget cut short resumes)."""
    if model_problem(folder / config.MODEL_FILE) or not (folder / config.TRAINING_FILE).exists():
        return False
    record = artifacts.read_training_dict(folder)
    done, best = record.get("finetune_epochs_run") or 0, record.get("best_epoch") or 0
    return (done >= record["config"]["max_finetune_epochs"]
            or done - best >= record["config"].get("early_stopping_patience",
                                                   config.EARLY_STOPPING_PATIENCE))


def member_summary(folder: Path) -> dict:
    """What the ensemble's record keeps of a trained member folder (its ``training.json``)."""
    record = artifacts.read_training_dict(folder)
    if not record or model_problem(folder / config.MODEL_FILE):
        raise SystemExit(f"{folder} is not a trained member: it needs {config.MODEL_FILE} and "
                         f"{config.TRAINING_FILE}.")
    return {"seed": record["config"].get("seed"), "folder": str(folder),
            "val_log_loss": float(record["calibration"]["val_log_loss_original_images"]),
            "best_epoch": record.get("best_epoch"),
            "calibration": {k: record["calibration"][k] for k in ("scale", "bias")},
            "data_fingerprint": record.get("data_fingerprint")}


def failed_members(summaries: list[dict]) -> list[str | None]:
    """The declared failed-member rule (validation only), per member: why it failed, or None.

    Failed: its fine-tuning checkpoint is epoch ``config.ENSEMBLE_FAILED_BEST_EPOCH``, or its
    calibrated validation log loss is over ``config.ENSEMBLE_FAILED_LOSS_RATIO`` x the median
    of these members' (docs/heatmaps_and_ensemble.md, "Step 1: the ensemble").
    """
    median = float(np.median([s["val_log_loss"] for s in summaries]))
    reasons: list[str | None] = []
    for s in summaries:
        if s["best_epoch"] == config.ENSEMBLE_FAILED_BEST_EPOCH:
            reasons.append(f"fine-tuning checkpoint is epoch {config.ENSEMBLE_FAILED_BEST_EPOCH}")
        elif s["val_log_loss"] > config.ENSEMBLE_FAILED_LOSS_RATIO * median:
            reasons.append(f"calibrated validation log loss {s['val_log_loss']:.4f} is over "
                           f"{config.ENSEMBLE_FAILED_LOSS_RATIO:g} x the members' median "
                           f"{median:.4f}")
        else:
            reasons.append(None)
    return reasons


def train_members(args: argparse.Namespace) -> dict:
    """``--members K``: train members of the given recipe with the first K seeds of
    ``config.ENSEMBLE_SEEDS`` into OUT/members/seed_S/, member by member (a finished member is
    skipped, an unfinished one resumes; each gets ``--max-minutes``), replace each failed member
    (:func:`failed_members`) by the next spare seed of ``config.ENSEMBLE_SPARE_SEEDS``, then
    :func:`assemble` them into OUT. The members share one decoded-image cache in OUT. The rule
    is applied only once every member has finished; until then nothing is joined."""
    seeds = list(config.ENSEMBLE_SEEDS[:args.members])
    spares = list(config.ENSEMBLE_SPARE_SEEDS)
    replaced: list[dict] = []
    while True:
        for seed in seeds:
            folder = member_folder(args.out, seed)
            if member_finished(folder):
                print(f"member seed {seed}: trained, in {folder}")
                continue
            resume = (folder / "checkpoints" / "state.json").exists()
            print(f"member seed {seed}: {'resuming' if resume else 'training'} in {folder}")
            train(argparse.Namespace(**{**vars(args), "out": folder, "seed": seed, "resume": resume,
                                        "arrays_dir": args.out}))
            keras.backend.clear_session()  # the next member starts from a clean graph
        if unfinished := [s for s in seeds if not member_finished(member_folder(args.out, s))]:
            print(f"members not finished yet (cut short by --max-minutes): seeds "
                  f"{', '.join(map(str, unfinished))}; run the same command again to go on")
            return {"unfinished": unfinished}
        reasons = failed_members([member_summary(member_folder(args.out, s)) for s in seeds])
        if not any(reasons):
            break
        for i, reason in enumerate(reasons):
            if reason is None:
                continue
            if not spares:
                raise SystemExit(f"member seed {seeds[i]} failed ({reason}) and the spare seeds "
                                 f"{config.ENSEMBLE_SPARE_SEEDS} are used up: no ensemble made.")
            replaced.append({"seed": seeds[i], "reason": reason, "replaced_by": spares[0]})
            print(f"member seed {seeds[i]} failed ({reason}); replaced by seed {spares[0]}")
            seeds[i] = spares.pop(0)
    return assemble(args, [member_folder(args.out, s) for s in seeds], replaced)


def validation_arrays(out: Path, splits: dict, lungs_path: Path, folders: list[Path] = ()
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation images, lung masks and labels: from the first decoded-image cache of ``out``
    or a member folder made from the same files and segmenter (read, never written), else
    decoded into ``out``'s."""
    key = arrays_key(splits, lungs_path)
    for folder in [out, *folders]:
        cache = folder / "checkpoints" / "arrays.npz"
        if cache.exists():
            with np.load(cache) as f:
                if str(f["key"]) == key:
                    print(f"validation images and lung masks from {cache}")
                    return f["x_val"], f["m_val"], f["y_val"]
    a = cached_arrays(out, splits, lungs_path)
    return a["x_val"], a["m_val"], a["y_val"]


def assemble(args: argparse.Namespace, folders: list[Path], replaced: list[dict] | None = None
             ) -> dict:
    """Join trained member folders into one model (:func:`pneumo.models.ensemble.build_ensemble`),
    fit its calibration on validation (:func:`fit_calibration`, as for one model) and write
    OUT/pneumo.keras and OUT/training.json, which lists the members (seed, folder, calibrated
    validation log loss, best epoch, failed or not by the declared rule)."""
    from pneumo.models.ensemble import build_ensemble

    started = time.time()
    summaries = [member_summary(Path(f)) for f in folders]
    splits = load_splits(args.data)
    if args.limit:
        splits = {k: _limit(v, args.limit) for k, v in splits.items()}
    data = fingerprint([s for v in splits.values() for s in v])
    if other := [s["folder"] for s in summaries if s["data_fingerprint"] != data]:
        raise SystemExit(f"trained on other data than {args.data}"
                         f"{' with --limit ' + str(args.limit) if args.limit else ''}: "
                         f"{', '.join(other)}")
    for summary, reason in zip(summaries, failed_members(summaries)):
        summary.update(failed=reason is not None, failed_reason=reason)
        del summary["data_fingerprint"]
    x_val, m_val, y_val = validation_arrays(args.out, splits, args.lungs, [Path(f) for f in folders])
    model = build_ensemble([keras.saving.load_model(Path(f) / config.MODEL_FILE, compile=False)
                            for f in folders])
    calibration = fit_calibration(model, x_val, m_val, y_val)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / config.MODEL_FILE)
    logit = logit_model(model).predict(x_val, batch_size=64, verbose=0).ravel()

    records = [artifacts.read_training_dict(Path(f)) for f in folders]
    recipe = {k: v for k, v in records[0]["config"].items() if k != "seed"}
    differ = sorted({k for r in records for k, v in r["config"].items()
                     if k != "seed" and recipe.get(k) != v})
    losses = [s["val_log_loss"] for s in summaries]
    ensemble_loss = calibration["val_log_loss_original_images"]
    report = {
        "model": f"Ensemble of {len(folders)} EfficientNet-Lite0 members (each: ImageNet init + "
                 "logistic head): mean of their uncalibrated logits + Platt",
        "config": {**recipe, "seeds": [s["seed"] for s in summaries],
                   "recipe_differs_in": differ},
        "splits": records[0]["splits"], "patients": records[0]["patients"],
        "head_only_val_auc": float(np.mean([r["head_only_val_auc"] for r in records])),
        "checkpoint": {"chosen": "ensemble"},
        "best_epoch": None,
        "best_val_loss": log_loss(y_val, 1.0 / (1.0 + np.exp(-logit))),
        "best_val_auc": roc_auc(y_val, logit),
        "final_val": {"val_loss": ensemble_loss, "val_auc": roc_auc(y_val, logit)},
        "members": summaries,
        "members_replaced": replaced or [],
        "members_val_log_loss": {"mean": float(np.mean(losses)), "median": float(np.median(losses)),
                                 "sd": float(np.std(losses, ddof=1))},
        "sanity_rule_1": {  # the other two rules need the robustness and heat-map benchmarks
            "rule": "rejected if the ensemble's calibrated validation log loss is above the mean "
                    "of the members'",
            "ensemble": ensemble_loss, "members_mean": float(np.mean(losses)),
            "rejects": bool(ensemble_loss > np.mean(losses))},
        "calibration": calibration,
        "duration_minutes": round(sum(r["duration_minutes"] for r in records)
                                  + (time.time() - started) / 60, 1),
        "versions": versions(),
        "data_fingerprint": data,
        "data_path": str(args.data),
    }
    artifacts.write_training(report, args.out)
    print(json.dumps({k: report[k] for k in ("members", "sanity_rule_1", "calibration")}))
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
    p = argparse.ArgumentParser(
        prog="python -m pneumo.train", description="Train pneumo's EfficientNet-Lite0 classifier.")
    p.add_argument("--data", type=Path, required=True, help="Kaggle-layout chest_xray folder")
    p.add_argument("--out", type=Path, default=config.WEIGHTS_DIR)
    p.add_argument("--epochs", type=int, default=config.FINETUNE_EPOCHS, help="fine-tuning epochs")
    p.add_argument("--head-epochs", type=int, default=config.HEAD_EPOCHS,
                   help="epochs of the head on cached features (cheap)")
    p.add_argument("--finetune-from", default="block3a", help="first backbone block to train")
    p.add_argument("--lr", type=float, default=config.FINETUNE_LEARNING_RATE)
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--imagenet", type=Path, default=config.weights_path(config.IMAGENET_NOTOP_FILE))
    p.add_argument("--lungs", type=Path, default=config.weights_path(config.LUNG_MODEL_FILE),
                   help="lung-field segmenter that draws the training masks")
    p.add_argument("--lung-penalty", type=float, default=config.LUNG_PENALTY,
                   help="weight of the CAM-mass-outside-the-lungs term (0: off)")
    p.add_argument("--consistency", type=float, default=config.CONSISTENCY_WEIGHT,
                   help="weight of the squared logit difference between two views of an image "
                        "(0: off; otherwise each batch holds half as many images, twice)")
    p.add_argument("--stability", type=float, default=config.STABILITY_WEIGHT,
                   help="weight of the Jensen-Shannon divergence between an augmented image and "
                        "its mildly re-encoded copy, from epoch config.STABILITY_FROM_EPOCH on "
                        "(0: off; otherwise each batch holds half as many images, twice)")
    p.add_argument("--hflip", type=float, default=config.HFLIP_PROBABILITY,
                   help="probability of mirroring a training image (and its lung mask) left-right "
                        "(0: never, run 3's recipe)")
    p.add_argument("--average-last", type=int, default=config.AVERAGE_LAST_EPOCHS,
                   help="average the weights of this many last epochs if validation prefers it")
    p.add_argument("--max-minutes", type=float, help="stop fine-tuning after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.keras")
    p.add_argument("--recalibrate", action="store_true",
                   help="only refit the calibration of the model in --out (no training)")
    p.add_argument("--seed", type=int, default=config.SEED,
                   help="seed of the training randomness (initialisation, augmentation, order); "
                        "the validation split and the calibration views always use config.SEED")
    p.add_argument("--limit", type=int, help="at most N images per class and split (smoke runs)")
    p.add_argument("--members", type=int, metavar="K",
                   help="train K ensemble members of the recipe the other flags give, seeds "
                        f"{', '.join(map(str, config.ENSEMBLE_SEEDS))} in order (a failed member is "
                        "replaced by the next of "
                        f"{', '.join(map(str, config.ENSEMBLE_SPARE_SEEDS))}), into "
                        f"OUT/{config.ENSEMBLE_MEMBERS_DIR}/seed_S/, member by member (finished ones "
                        "are skipped, unfinished ones resume; each gets --max-minutes), then join "
                        "them into OUT/pneumo.keras")
    p.add_argument("--ensemble-of", type=Path, nargs="+", metavar="DIR",
                   help="join these trained member folders (each with pneumo.keras and "
                        "training.json) into one model, OUT/pneumo.keras, and fit its calibration "
                        "(no training)")
    p.add_argument("--verbose", type=int, default=1, help="Keras verbosity: 1 progress bar, 2 lines")
    args = p.parse_args(argv)
    if problem := layout_problem(args.data):
        p.error(problem)
    if args.recalibrate and (problem := model_problem(args.out / config.MODEL_FILE)):
        p.error(f"--recalibrate refits the calibration of a trained model. {problem}")
    if sum(bool(x) for x in (args.recalibrate, args.members, args.ensemble_of)) > 1:
        p.error("--recalibrate, --members and --ensemble-of are three different jobs: give one")
    if args.members is not None and not 2 <= args.members <= len(config.ENSEMBLE_SEEDS):
        p.error(f"--members takes 2 to {len(config.ENSEMBLE_SEEDS)} (the declared seeds)")
    if args.ensemble_of is not None:
        if len(args.ensemble_of) < 2:
            p.error("--ensemble-of needs at least two member folders")
        for folder in args.ensemble_of:
            if model_problem(folder / config.MODEL_FILE) or not (folder / config.TRAINING_FILE).exists():
                p.error(f"--ensemble-of: {folder} has no trained member ({config.MODEL_FILE} and "
                        f"{config.TRAINING_FILE})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.recalibrate:
        recalibrate(args)
    elif args.ensemble_of:
        assemble(args, args.ensemble_of)
    elif args.members:
        train_members(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
