"""Measure the "does not look like a chest X-ray" check.

    python benchmarks/ood_check.py [--data ../shared/data/chest_xray]

Builds a corpus of images that are not chest radiographs (the photographs and scans that
scikit-image ships, their grey versions, crops and rotations; test-made noise, documents,
gradients, shapes, flat colours), runs each through the app's path (decode -> model ->
quality check -> OOD check, so the texture test is skipped for an original under
``config.QUALITY_OOD_TEXTURE_SIDE`` px as in the app), and prints the share flagged per
kind. With --data it also flags the official test split (target: at most 1 % flagged; at
least 95 % of the corpus flagged). Results go to ``benchmarks/ood_results.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pneumo import config  # noqa: E402
from pneumo.models import ood, quality  # noqa: E402
from pneumo.reading.reader import read_batch  # noqa: E402

SKIMAGE_PHOTOS = ["astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass",
                  "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "microaneurysms",
                  "moon", "motorcycle_left", "page", "retina", "rocket", "text", "logo", "colorwheel",
                  "clock", "checkerboard", "shepp_logan_phantom", "cat", "eagle", "kidney", "lily",
                  "skin", "binary_blobs"]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype("uint8")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return a[..., :3]


def skimage_photos() -> dict[str, list[np.ndarray]]:
    """Photographs and scans bundled with scikit-image, in colour, grey, cropped and rotated."""
    from skimage import data

    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for name in SKIMAGE_PHOTOS:
        try:
            img = _rgb(getattr(data, name)())
        except Exception:  # an image the installed version fetches from the internet
            continue
        if min(img.shape[:2]) < 64:
            continue
        grey = np.repeat(np.asarray(Image.fromarray(img).convert("L"))[..., None], 3, -1)
        h, w = img.shape[:2]
        out["photo (colour)" if img.std(axis=-1).mean() > 3 else "photo (grey)"].append(img)
        out["photo made grey"].append(grey)
        out["photo crop"].append(img[h // 4: 3 * h // 4, w // 4: 3 * w // 4])
        out["photo rotated"].append(np.ascontiguousarray(np.rot90(grey)))
    faces = data.lfw_subset()[:40]
    out["face (grey, upscaled)"] = [_rgb(np.asarray(Image.fromarray(_rgb(f)).resize((160, 160))))
                                    for f in faces]
    return out


def synthetic(n: int = 30, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Noise, documents, gradients, shapes and flat colours, made here."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for _ in range(n):
        size = int(rng.integers(200, 700))
        out["uniform noise"].append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        grey = np.clip(rng.normal(128, 40, (size, size)), 0, 255).astype("uint8")
        out["grey noise"].append(_rgb(grey))
        page = Image.new("L", (size, int(size * 1.3)), 255)
        draw = ImageDraw.Draw(page)
        for line in range(4, int(size * 1.3) - 20, 18):
            words = " ".join("".join(chr(rng.integers(97, 123)) for _ in range(rng.integers(2, 9)))
                             for _ in range(12))
            draw.text((10, line), words, fill=0)
        out["document"].append(_rgb(np.asarray(page)))
        ramp = np.linspace(0, 255, size)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.meshgrid(ramp, ramp, indexing="ij")
        out["gradient"].append(_rgb((np.cos(angle) * xx + np.sin(angle) * yy).astype("float32")))
        canvas = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(6):
            x0, y0 = rng.integers(0, size // 2, 2)
            x1, y1 = x0 + rng.integers(20, size // 2), y0 + rng.integers(20, size // 2)
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out["shapes"].append(np.asarray(canvas))
        out["flat colour"].append(np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8))
    return out


def flag_rates(images_by_kind: dict[str, list[np.ndarray]], explainer, detector,
               checker=None) -> dict:
    rates = {}
    for kind, images in images_by_kind.items():
        readings = read_batch([(f"{kind}{i}.png", _png(im)) for i, im in enumerate(images)],
                              explainer, ood_check=detector, quality_checker=checker)
        read = [r for r in readings if r.ok]
        rates[kind] = {"n": len(read), "flagged": sum(r.ood_warning is not None for r in read),
                       "refused_by_decoder": len(readings) - len(read)}
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="Kaggle-layout folder: also flag its test split")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ood_results.json"))
    args = parser.parse_args(argv)

    from pneumo.models.classifier import load_model
    from pneumo.models.explain import CamExplainer

    detector = ood.load_detector()
    if detector is None:
        sys.exit("no weights/ood.npz: run python -m pneumo.evaluate first")
    explainer = CamExplainer(load_model())
    checker = quality.QualityChecker.load()  # as the app: small originals skip the texture test
    rates = flag_rates({**skimage_photos(), **synthetic()}, explainer, detector, checker)
    total = sum(r["n"] for r in rates.values())
    flagged = sum(r["flagged"] for r in rates.values())
    result = {"not_xray": {"by_kind": rates, "n": total, "flagged_share": flagged / total},
              "texture_test_skipped_below_px": config.QUALITY_OOD_TEXTURE_SIDE,
              "quality_check_available": checker.available}
    print(f"{'kind':<24}{'n':>5}{'flagged':>9}")
    for kind, r in rates.items():
        print(f"{kind:<24}{r['n']:>5}{r['flagged'] / max(r['n'], 1):>9.1%}")
    print(f"not chest X-rays: {flagged}/{total} flagged = {flagged / total:.1%} (target >= 95 %)")
    if args.data:
        from pneumo.data.splits import read_split

        test = read_split(args.data, "test")
        readings = read_batch([(s.filename, s.path.read_bytes()) for s in test], explainer,
                              ood_check=detector, quality_checker=checker)
        n_flag = sum(r.ood_warning is not None for r in readings)
        result["test_split"] = {"n": len(readings), "flagged": n_flag,
                                "flagged_share": n_flag / len(readings)}
        print(f"official test split: {n_flag}/{len(readings)} flagged = "
              f"{n_flag / len(readings):.2%} (target <= 1 %)")
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
