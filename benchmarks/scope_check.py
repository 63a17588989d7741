"""Measure the scope check (issue #20): who and what pneumo declines to answer about.

    python benchmarks/scope_check.py [--data ../shared/data/chest_xray] [--quick]

Every image goes through the app's path (:func:`pneumo.reading.reader.read_batch`: decode, model,
lung fields, quality, "not a chest X-ray", scope check), and its trust state
(:mod:`pneumo.reading.trust`) is counted. Sets:

- the official test split (children 1-5): originals and the four re-encodings of
  ``benchmarks/robustness.py``; the share given any scope verdict, and the classifier's figures at
  the recommended threshold on the images that stay trusted;
- NIH ChestX-ray14 (``../shared/data/nih_cxr14_sample``) by age band: the pixel population check
  with each patient held out (its out-of-fold score from ``weights/population.json``, grouped
  cross-validation), together with the other checks;
- the adult ``ccxr_*`` radiographs of ``../shared/data/lung_masks`` (another source, measure only);
- the "not a chest X-ray" corpus of ``benchmarks/ood_check.py`` (photos and synthetic images);
- synthetic DICOMs with each header case, made from a test film: the verdict must be right.

Figures go to ``benchmarks/scope_results.json``; docs/scope.md quotes them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ood_check import _png, skimage_photos, synthetic  # noqa: E402

from pneumo import config  # noqa: E402
from pneumo.data.older import SHARED_OLDER_DIR, read_older  # noqa: E402
from pneumo.evaluation import artifacts  # noqa: E402
from pneumo.evaluation.metrics import metrics_at, roc_auc  # noqa: E402
from pneumo.evaluation.robustness import TRANSFORMS  # noqa: E402
from pneumo.reading import trust  # noqa: E402
from pneumo.reading.reader import read_batch  # noqa: E402
from pneumo.reading.scope import LOOKS_OLDER, ScopeCheck  # noqa: E402

CHUNK = 64
TARGETS = {"adults_18+": 0.98, "children_10-17": 0.90, "adults_other_sources": 0.95,
           "test_split_max": 0.01, "not_xray_corpus": 0.98}


class Pipeline:
    """The app's models, loaded once: ``read(files)`` -> readings with every check run."""

    def __init__(self, population=True):
        from pneumo.cli.loaders import load_quality_checker, load_segmenter
        from pneumo.models import ood
        from pneumo.models.population import load_population
        from pneumo.models.runtime import load_explainer

        self.explainer = load_explainer()
        self.detector = ood.load_detector()
        self.segmenter = load_segmenter()
        self.checker = load_quality_checker()
        self.scope = ScopeCheck(load_population() if population else None)

    def read(self, files: list[tuple[str, bytes]], scope=None):
        out = []
        for start in range(0, len(files), CHUNK):
            out.extend(read_batch(files[start:start + CHUNK], self.explainer, ood_check=self.detector,
                                  segmenter=self.segmenter, quality_checker=self.checker,
                                  scope_check=scope or self.scope))
        return out


def counts(readings) -> dict:
    """Shares by trust state and by reason code over the readable images."""
    read = [r for r in readings if r.ok]
    states = Counter(r.trust.state for r in read)
    codes = Counter(r.trust.code for r in read if r.trust.state == trust.OUT_OF_SCOPE)
    n = max(len(read), 1)
    return {"n": len(read), "unreadable": len(readings) - len(read),
            "out_of_scope": states[trust.OUT_OF_SCOPE] / n, "doubtful": states[trust.DOUBTFUL] / n,
            "any_verdict": (states[trust.OUT_OF_SCOPE] + states[trust.DOUBTFUL]) / n,
            "by_reason": {k: v / n for k, v in sorted(codes.items())}}


def classifier_on_trusted(readings, labels: np.ndarray, threshold: float) -> dict:
    keep = np.array([r.ok and r.trust.trusted for r in readings])
    p = np.array([r.probability if r.ok else np.nan for r in readings])
    out = {"n_trusted": int(keep.sum())}
    for name, mask in (("all", np.array([r.ok for r in readings])), ("trusted", keep)):
        m = metrics_at(labels[mask], p[mask], threshold)
        out[name] = {"auc": roc_auc(labels[mask], p[mask]), "accuracy": m["accuracy"],
                     "sensitivity": m["sensitivity"], "specificity": m["specificity"]}
    return out


def test_split(pipe: Pipeline, data: Path, threshold: float, quick: bool) -> dict:
    from pneumo.data.splits import read_split

    samples = read_split(data, "test")
    if quick:
        samples = samples[::8]
    labels = np.array([s.label for s in samples])
    originals = [(s.filename, s.path.read_bytes()) for s in samples]
    result = {}
    for name, transform in (("original", None), *TRANSFORMS.items()):
        files = originals if transform is None else [(n, transform(b)) for n, b in originals]
        readings = pipe.read(files)
        result[name] = {**counts(readings), **classifier_on_trusted(readings, labels, threshold)}
        print(f"test split, {name:<10} any verdict {result[name]['any_verdict']:.2%}"
              f" (out of scope {result[name]['out_of_scope']:.2%}) {result[name]['by_reason']}",
              flush=True)
    return result


def older(pipe: Pipeline, root: Path, quick: bool) -> dict:
    """NIH by age band: the pixel check by its out-of-fold score (patient held out), plus the
    other checks as the app runs them."""
    record = json.loads(artifacts.weights_file(config.POPULATION_RECORD_FILE).read_text())
    oof, threshold = record["oof_older_originals"], record["threshold"]
    samples = read_older(root)
    if quick:
        samples = samples[::6]
    readings = pipe.read([(s.path.name, s.path.read_bytes()) for s in samples],
                         scope=ScopeCheck(None))  # header only; the pixels by held-out score below
    bands: dict[str, list[bool]] = {}
    pixel_only: dict[str, list[bool]] = {}
    normal_called: dict[str, list[bool]] = {}
    for s, r in zip(samples, readings):
        held_out = oof.get(s.path.name)
        older_flag = held_out is not None and held_out >= threshold
        flagged = (not r.ok) or older_flag or not r.trust.trusted
        bands.setdefault(s.band, []).append(flagged)
        pixel_only.setdefault(s.band, []).append(older_flag)
        if s.label == "NO_FINDING":
            normal_called.setdefault(s.band, []).append(
                r.ok and not flagged and r.probability >= artifacts.recommended_threshold())
    return {band: {"n": len(v), "out_of_scope_any_check": float(np.mean(v)),
                   "population_check_alone": float(np.mean(pixel_only[band])),
                   "no_finding_unflagged_called_pneumonia": (
                       float(np.mean(normal_called[band])) if normal_called.get(band) else None),
                   "cv_interval95_population_check_originals":
                       record["cross_validation"].get(f"older_{band}_originals", {}).get("interval95")}
            for band, v in sorted(bands.items())}


def other_adults(pipe: Pipeline, root: Path) -> dict:
    """The adult ``ccxr_*`` radiographs of the lung-mask set (another source; measure only)."""
    with (root / "MANIFEST.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["id"].startswith("ccxr_")]
    by_group = {}
    for group in ("adult", "unknown"):
        chosen = [r for r in rows if r["age_group"] == group]
        readings = pipe.read([(r["id"] + ".png", (root / "images" / f"{r['id']}.png").read_bytes())
                              for r in chosen])
        by_group[group] = counts(readings)
        by_group[group]["population_check"] = float(np.mean(
            [r.trust.code == LOOKS_OLDER for r in readings if r.ok]))
    return by_group


def not_xray(pipe: Pipeline) -> dict:
    kinds = {**skimage_photos(), **synthetic()}
    result, flagged, total = {}, 0, 0
    for kind, images in kinds.items():
        readings = pipe.read([(f"{kind}{i}.png", _png(im)) for i, im in enumerate(images)])
        read = [r for r in readings if r.ok]
        n_flag = sum(not r.trust.trusted for r in read)
        result[kind] = {"n": len(read), "not_answered": n_flag,
                        "not_xray": sum(r.trust.code == trust.NOT_XRAY for r in read),
                        "refused_by_decoder": len(readings) - len(read)}
        flagged, total = flagged + n_flag, total + len(read)
    return {"by_kind": result, "n": total, "not_answered_share": flagged / max(total, 1)}


HEADER_CASES = {  # tags -> expected reason code ("" = in scope by the header)
    "adult age": ({"PatientAge": "045Y"}, "header_age"),
    "birth date, adult": ({"PatientBirthDate": "19700101", "StudyDate": "20200101"}, "header_age"),
    "birth date, child": ({"PatientBirthDate": "20200101", "StudyDate": "20230101"}, ""),
    "child age": ({"PatientAge": "003Y"}, ""),
    "lateral view": ({"ViewPosition": "LL"}, "header_view"),
    "other body part": ({"BodyPartExamined": "ABDOMEN"}, "header_body_part"),
    "other modality": ({"Modality": "MR"}, "header_modality"),
    "secondary capture": ({"Modality": "SC"}, ""),
    "no tags": ({}, ""),
}


def header_cases(pipe: Pipeline, data: Path) -> dict:
    """Synthetic DICOMs of one test film, one per header case: the scope verdict by the header."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from pneumo.data.splits import read_split
    from pneumo.io.images import decode_image

    film = next(s for s in read_split(data, "test") if s.label == 0)
    pixels = np.asarray(decode_image(film.path.read_bytes()).pixels)
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    files = []
    for name, (tags, _) in HEADER_CASES.items():
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Modality = "DX"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append((f"{name}.dcm", buf.getvalue()))
    readings = pipe.read(files)
    cases = {}
    for (name, (_, expected)), r in zip(HEADER_CASES.items(), readings):
        got = r.scope.code if r.scope is not None and r.scope.code.startswith("header_") else ""
        cases[name] = {"expected": expected, "got": got, "right": got == expected,
                       "trust": r.trust.state}
    return {"cases": cases, "right_share": float(np.mean([c["right"] for c in cases.values()]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--older", type=Path, default=SHARED_OLDER_DIR)
    parser.add_argument("--lung-masks", type=Path, default=config.SHARED_LUNG_MASKS_DIR)
    parser.add_argument("--quick", action="store_true", help="every 8th test image, every 6th NIH")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("scope_results.json"))
    args = parser.parse_args(argv)
    started = time.time()
    pipe = Pipeline()
    threshold = artifacts.recommended_threshold()
    result = {"threshold": threshold, "targets": TARGETS, "quick": args.quick,
              "header_cases": header_cases(pipe, args.data)}
    print(f"DICOM header cases right: {result['header_cases']['right_share']:.0%}", flush=True)
    result["test_split"] = test_split(pipe, args.data, threshold, args.quick)
    result["nih_by_age_band"] = older(pipe, args.older, args.quick)
    for band, r in result["nih_by_age_band"].items():
        print(f"NIH {band:<6} n={r['n']:<4} out of scope {r['out_of_scope_any_check']:.1%} "
              f"(population check alone {r['population_check_alone']:.1%})", flush=True)
    if (args.lung_masks / "MANIFEST.csv").exists():
        result["ccxr_other_source"] = other_adults(pipe, args.lung_masks)
        for group, r in result["ccxr_other_source"].items():
            print(f"ccxr {group:<8} n={r['n']:<4} out of scope {r['out_of_scope']:.1%} "
                  f"{r['by_reason']}", flush=True)
    result["not_xray_corpus"] = not_xray(pipe)
    print(f"not chest X-rays not answered: {result['not_xray_corpus']['not_answered_share']:.1%}")
    result["seconds"] = round(time.time() - started)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
