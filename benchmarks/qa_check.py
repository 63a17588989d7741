"""Measure the image quality check (pneumo.models.quality) on the official test split. A report, not a test.

    python benchmarks/qa_check.py [--data ../shared/data/chest_xray] [--no-ood]

Every test image goes through the app's decoding path (bytes -> :func:`pneumo.io.images.decode_image`
-> 224 px model input) as it is and as transformed copies: turned 90 deg anticlockwise / 180 /
90 deg clockwise, flipped top to bottom, inverted, shrunk to 64x64 (PNG), and, not a target,
mirrored left-right. Per copy: the share that gets the matching finding (and only it), and the
share of untransformed images with any warning. For the untransformed and 64 px copies also
the share the "not a chest X-ray" check flags, test by test (colour, texture, features), both
without the texture skip and as the app does it (texture test skipped where
:func:`pneumo.models.quality.suppress_ood_texture` says so: originals under
``config.QUALITY_OOD_TEXTURE_SIDE``), and the share of untransformed images with any quality
*or* OOD warning. Targets: >= 95 % of turned/flipped/inverted copies get the matching message;
<= 1 % of untransformed images get any QA or OOD warning; >= 95 % of 64 px copies get the
low-resolution note and <= 5 % the OOD message. Writes ``benchmarks/qa_results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pneumo import config  # noqa: E402
from pneumo.io.images import decode_image, to_model_input  # noqa: E402
from pneumo.models import quality  # noqa: E402

SMALL_SIDE = 64
COPIES = {  # name -> (expected finding codes, target share or None)
    "untransformed": ((), None),
    quality.ROT90: ((quality.ROT90,), 0.95),
    quality.ROT180: ((quality.ROT180,), 0.95),
    quality.ROT270: ((quality.ROT270,), 0.95),
    quality.UPSIDE_DOWN: ((quality.UPSIDE_DOWN,), 0.95),
    quality.INVERTED: ((quality.INVERTED,), 0.95),
    "64px": ((quality.LOW_RESOLUTION,), 0.95),
    "mirrored_left_right": ((), None),
}


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def make_copy(rgb: np.ndarray, name: str) -> np.ndarray:
    """The decoded test image transformed as ``name`` says (RGB uint8, any size)."""
    if name == "untransformed":
        return rgb
    if name == "64px":
        return cv2.resize(rgb, (SMALL_SIDE, SMALL_SIDE), interpolation=cv2.INTER_AREA)
    if name == "mirrored_left_right":
        return np.ascontiguousarray(rgb[:, ::-1])
    return quality.apply(rgb, name)


def decoded_copies(paths: list[Path], name: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Model inputs and original (height, width) of every test image's copy, via PNG bytes."""
    inputs, sizes = [], []
    for path in paths:
        rgb = decode_image(path.read_bytes()).rgb
        copy = decode_image(_png(make_copy(rgb, name))).rgb
        inputs.append(to_model_input(copy))
        sizes.append(copy.shape[:2])
    return np.stack(inputs), sizes


def score(reports: list[quality.QualityReport], expected: tuple[str, ...]) -> dict:
    codes = [r.codes for r in reports]
    n = len(reports)
    matching = sum(all(c in found for c in expected) for found in codes) if expected else None
    exact = sum(sorted(found) == sorted(expected) for found in codes)
    found_counts: dict[str, int] = {}
    for found in codes:
        for c in found:
            found_counts[c] = found_counts.get(c, 0) + 1
    return {"n": n,
            "matching_share": None if matching is None else round(matching / n, 4),
            "exact_share": round(exact / n, 4),
            "any_warning_share": round(sum(bool(f) for f in codes) / n, 4),
            "findings": found_counts}


def ood_flags(model_inputs: np.ndarray, reports: list[quality.QualityReport], explainer,
              detector) -> dict[str, np.ndarray]:
    """Per image and test: colour, texture, features, and the app's decision ("app": texture
    skipped where :func:`quality.suppress_ood_texture` says so, as the reader does)."""
    from pneumo.models import ood

    feats = np.stack([e.features for e in explainer.explain(model_inputs)])
    low, high = detector.texture_range
    colour = np.array([ood.saturation(x) > ood.SATURATION_LIMIT for x in model_inputs])
    texture = np.array([not low <= ood.texture(x) <= high for x in model_inputs])
    features = detector.distance(feats) > detector.threshold
    skip = np.array([quality.suppress_ood_texture(r) for r in reports])
    return {"colour": colour, "texture": texture, "features": features,
            "app": colour | (texture & ~skip) | features}


def ood_rates(flags: dict[str, np.ndarray]) -> dict:
    """Share flagged by the OOD check without the texture skip ("today"), test by test, and as
    the app decides (``flagged_with_texture_suppressed``)."""
    colour, texture, features = flags["colour"], flags["texture"], flags["features"]
    today = colour | texture | features
    suppressed = flags["app"]
    n = len(today)
    return {"n": n, "flagged_today": round(float(today.mean()), 4),
            "colour_test": round(float(colour.mean()), 4),
            "texture_test": round(float(texture.mean()), 4),
            "feature_test": round(float(features.mean()), 4),
            "flagged_with_texture_suppressed": round(float(suppressed.mean()), 4),
            "flagged_by": {"colour": int(colour.sum()), "texture": int(texture.sum()),
                           "features": int(features.sum())}}


def timing(checker: quality.QualityChecker, images: np.ndarray) -> dict:
    """Milliseconds per image: one at a time (p50 after warm-up) and in a batch of 64."""
    sizes = [(224, 224)] * len(images)
    checker.check(images[:1], sizes[:1])
    checker.check(images[:64], sizes[:64])
    single = []
    for i in range(30):
        t = time.perf_counter()
        checker.check(images[i:i + 1], sizes[i:i + 1])
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    checker.check(images[:64], sizes[:64])
    batch = (time.perf_counter() - t) / 64
    return {"single_ms_p50": round(1000 * float(np.median(single)), 2),
            "batch64_ms_per_image": round(1000 * batch, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--no-ood", action="store_true", help="skip the OOD figures (no model)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("qa_results.json"))
    args = parser.parse_args(argv)

    from pneumo.data.splits import read_split

    test = read_split(args.data, "test")
    if not test:
        sys.exit(f"no test split under {args.data}")
    paths = [s.path for s in test]
    checker = quality.QualityChecker.load()
    if not checker.available:
        print(checker.notice)
    result: dict = {"n_test_images": len(paths), "thresholds": checker.thresholds,
                    "weights_sha256": {name: _sha(config.weights_path(name)) for name in (
                        config.QUALITY_MODEL_FILE, config.MODEL_FILE, "ood.npz")},
                    "quality_check_available": checker.available, "copies": {}}
    inputs_by_copy, reports_by_copy = {}, {}
    print(f"{'copy':<22}{'n':>5}{'matching':>10}{'exact':>8}{'any warn':>10}  target")
    for name, (expected, target) in COPIES.items():
        inputs, sizes = decoded_copies(paths, name)
        inputs_by_copy[name] = (inputs, sizes)
        reports = checker.check(inputs, sizes)
        reports_by_copy[name] = reports
        r = score(reports, expected)
        if name == "untransformed" and checker.available:
            # How close untransformed images come to a warning: their highest probability for
            # any transform (orientation or inversion), at the 50th, 99th and 100th percentile.
            top = [max(v for k, v in rep.probabilities.items() if k != quality.UPRIGHT)
                   for rep in reports]
            r["transform_probability_quantiles"] = {
                q: round(float(np.quantile(top, float(q))), 4) for q in ("0.5", "0.99", "1.0")}
        if name == "untransformed":
            r["target"] = "any_warning_share <= 0.01"
            r["met"] = r["any_warning_share"] <= 0.01
        elif target is not None:
            r["target"] = f"matching_share >= {target}"
            r["met"] = r["matching_share"] >= target
        result["copies"][name] = r
        shown = "-" if r["matching_share"] is None else f"{r['matching_share']:.1%}"
        print(f"{name:<22}{r['n']:>5}{shown:>10}{r['exact_share']:>8.1%}"
              f"{r['any_warning_share']:>10.1%}  {r.get('target', '(not a target)')}"
              f"{'' if 'met' not in r else (': met' if r['met'] else ': MISSED')}", flush=True)
        if name == "64px":
            # Warnings other than the low-resolution note on the small copies.
            others = sum(v for k, v in r["findings"].items() if k != quality.LOW_RESOLUTION)
            print(f"{'':<22}  orientation/inversion findings on 64 px copies: {others}")
    if checker.available:
        result["timing"] = timing(checker, inputs_by_copy["untransformed"][0])
        print(f"quality check: {result['timing']['single_ms_p50']} ms for one image, "
              f"{result['timing']['batch64_ms_per_image']} ms per image in a batch of 64")
    if not args.no_ood:
        from pneumo.models import ood
        from pneumo.models.classifier import load_model
        from pneumo.models.explain import CamExplainer

        detector = ood.load_detector()
        if detector is None:
            print("no weights/ood.npz: OOD figures skipped")
        else:
            explainer = CamExplainer(load_model())
            result["ood"] = {}
            for name in ("untransformed", "64px"):
                flags = ood_flags(inputs_by_copy[name][0], reports_by_copy[name], explainer,
                                  detector)
                r = ood_rates(flags)
                result["ood"][name] = r
                print(f"OOD ('not a chest X-ray') on {name}: {r['flagged_today']:.1%} flagged "
                      f"without the texture skip (colour {r['colour_test']:.1%}, texture "
                      f"{r['texture_test']:.1%}, features {r['feature_test']:.1%}); as the app "
                      f"decides: {r['flagged_with_texture_suppressed']:.1%}", flush=True)
                if name == "64px":
                    r["target"] = "flagged_with_texture_suppressed <= 0.05"
                    r["met"] = r["flagged_with_texture_suppressed"] <= 0.05
                if name == "untransformed":
                    qa = np.array([bool(rep.codes) for rep in reports_by_copy[name]])
                    either = qa | flags["app"]
                    result["untransformed_any_qa_or_ood_warning"] = {
                        "n": len(either), "share": round(float(either.mean()), 4),
                        "count": int(either.sum()), "quality": int(qa.sum()),
                        "ood": int(flags["app"].sum()),
                        "target": "share <= 0.01", "met": bool(either.mean() <= 0.01)}
                    print(f"untransformed test images with any QA or OOD warning: "
                          f"{int(either.sum())}/{len(either)} = {either.mean():.2%} "
                          f"(target <= 1 %)", flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
