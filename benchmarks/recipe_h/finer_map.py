"""Issue #25, step 0b: does a 14x14 Grad-CAM follow the film better than the 7x7 one?

    python benchmarks/recipe_h/finer_map.py [--split val] [--candidate NAME ...] [--limit N] [--out JSON]

The rule is declared in docs/heatmaps_and_ensemble.md ("Step 0b"). For each member of the
bundled ensemble, Grad-CAM (and Grad-CAM++) are taken by a backward pass from the member's own
calibrated score to a feature map: ``top_activation`` (7x7, the app's map today; its gradient is
constant over positions, so this reproduces the closed form) and ``block5c_add`` (14x14, the
candidate). The ensemble's map is the plain mean of its members' maps. Both are measured on the
same films with :func:`pneumo.evaluation.heatmaps.measure` (members' pairwise agreement included)
and :func:`pneumo.models.lungs.heatmap_report` (peak and mass in the segmenter's lung fields).
Occlusion uses the bundled model's logit. Validation is for the decision; test only after it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from pneumo import config  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/heatmaps.py
LAYERCAM = "LayerCAM"
# candidate -> (layer, the method its decision reads): the app's 7x7 Grad-CAM, F14, F14-L
CANDIDATES = {"7x7": (config.CAM_LAYER, "Grad-CAM"), "14x14": ("block5c_add", "Grad-CAM"),
              "14x14-layercam": ("block5c_add", LAYERCAM)}


def layercam_from_gradients(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(dS/dA_ijk) * A_ijk), normalised to 0..1.

    tf-keras-vis's ``Layercam`` computes the same, but from its own backward pass; here the one
    pass :class:`MemberGradients` makes serves all three maps."""
    from tf_keras_vis.utils import normalize

    return normalize(np.maximum((np.maximum(grads, 0.0) * features).sum(-1), 0.0))


class MemberGradients:
    """Per member: (feature map, dS/dA, S) at ``layer`` by one forward and backward pass."""

    def __init__(self, model, layer: str):
        import keras
        import tensorflow as tf

        from pneumo.models.ensemble import member_count
        from pneumo.models.explain import Head

        head = Head.of(model)
        self.k = member_count(model)
        self._runs = []
        for m in range(self.k):
            member = model.get_layer(f"{config.MEMBER_PREFIX}{m + 1}")
            view = keras.Model(member.input, [member.get_layer(layer).output, member.output])
            kernel = tf.constant(head.member_kernels[m], tf.float32)
            bias = tf.constant(float(head.member_biases[m]), tf.float32)

            def run(x, view=view, kernel=kernel, bias=bias):
                with tf.GradientTape() as tape:
                    mid, top = view(x, training=False)
                    score = tf.linalg.matvec(tf.reduce_mean(top, axis=[1, 2]), kernel) + bias
                return mid, tape.gradient(score, mid), score

            spec = tf.TensorSpec([None, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS],
                                 tf.float32)
            self._runs.append(tf.function(run, input_signature=[spec], reduce_retracing=True))

    def maps(self, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
        """(K, N, h, w) Grad-CAM, Grad-CAM++ and LayerCAM maps of each member."""
        from pneumo.models.explain import (
            METHODS,
            gradcam_from_gradients,
            gradcam_plus_plus_from_gradients,
        )

        out = {method: [[] for _ in range(self.k)] for method in (*METHODS, LAYERCAM)}
        for i in range(0, len(images), batch_size):
            x = np.asarray(images[i:i + batch_size], "float32")
            for m, run in enumerate(self._runs):
                mid, grads, score = (t.numpy() for t in run(x))
                out[METHODS[0]][m].append(gradcam_from_gradients(mid, grads))
                out[METHODS[1]][m].append(gradcam_plus_plus_from_gradients(mid, grads, score))
                out[LAYERCAM][m].append(layercam_from_gradients(mid, grads))
        return {k: np.stack([np.concatenate(v) for v in per]) for k, per in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--candidate", choices=tuple(CANDIDATES), action="append", default=None,
                        help="which maps to measure (default: all)")
    args = parser.parse_args(argv)
    out_path = args.out or HERE / f"finer_map_{args.split}.json"
    chosen = {k: CANDIDATES[k] for k in (args.candidate or CANDIDATES)}

    from heatmaps import limited

    from pneumo.cli.evaluate import explainer_logits, segmenter_masks
    from pneumo.data.splits import load_arrays, load_splits
    from pneumo.evaluation import heatmaps as hm
    from pneumo.models.classifier import load_model
    from pneumo.models.lungs import heatmap_report
    from pneumo.models.runtime import file_sha256, load_explainer

    model_path = config.weights_path(config.MODEL_FILE)
    model = load_model(model_path)
    explainer = load_explainer(model_path)
    samples = limited(load_splits(args.data)[args.split], args.limit)
    images, labels = load_arrays(samples, progress=False)
    masks, no_lungs = segmenter_masks(images, config.weights_path(config.LUNG_MODEL_FILE))
    result: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                    "model_sha256": file_sha256(model_path), "split": args.split,
                    "n": len(samples), "candidates": chosen, "segmenter_no_lungs": int(no_lungs.sum())}
    for name, (layer, method) in chosen.items():
        t0 = time.perf_counter()
        grads = MemberGradients(model, layer)
        member_maps = grads.maps(images)
        mean_maps = {k: v.mean(axis=0) for k, v in member_maps.items()}
        seconds_maps = time.perf_counter() - t0
        report = hm.measure(
            images, labels,
            cams=lambda x, g=grads, method=method: g.maps(x)[method].mean(axis=0),
            logits=explainer_logits(explainer), lung_masks=masks, maps=mean_maps[method],
            members={f"member_{m + 1}": (lambda x, m=m, mm=member_maps, method=method:
                                         mm[method][m])
                     for m in range(grads.k)})
        for cls in report.values():
            cls.pop("member_agreement", None)  # the pairs below say it; each vs the mean is moot
        result[name] = {"layer": layer, "method": method, "follow_the_film": report,
                        "in_lungs": heatmap_report(mean_maps, masks, labels),
                        "seconds": round(time.perf_counter() - t0, 1),
                        "seconds_for_maps": round(seconds_maps, 1)}
        p = report.get("PNEUMONIA", {})
        print(f"{name}: agreement {p.get('members_pairwise_agreement', {}).get('mean')}, "
              f"diversity {p.get('diversity', {}).get('mean')}, "
              f"flip {p.get('flip_equivariance', {}).get('mean')}", flush=True)
        if layer == config.CAM_LAYER:  # the app's closed-form maps (a check of this script)
            app = np.stack([e.cams[method] for e in explainer.explain(images[:64])])
            result[name]["max_abs_diff_from_app_maps"] = float(
                np.abs(app - mean_maps[method][:64]).max())
    out_path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
