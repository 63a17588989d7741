"""The benchmark script runs end to end and writes every row (tiny repetition count)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

from conftest import ROOT


def _bench_module(monkeypatch):
    """benchmarks/bench.py as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_every_row(tmp_path, monkeypatch, bundled_model_dir, capsys):
    bench = _bench_module(monkeypatch)
    out = tmp_path / "results.quick.json"
    assert bench.main(["--quick", "--repeat", "1", "--batch", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())

    names = [row["name"] for row in results["rows"]]
    for expected in ("16-bit PNG", "JPEG", "prediction, 1 image", "prediction, batch of 3",
                     "Grad-CAM, 1 image", "Grad-CAM++, 1 image", "batch of 3 files with CAMs",
                     "cold start", "peak RSS", "audit record of one reading"):
        assert any(expected in name for name in names), expected
    untimed = {"Grad-CAM, 1 image", "Grad-CAM++, 1 image", "batch of 3 files with CAMs, end to end"}
    for row in results["rows"]:
        if row["name"] in untimed:  # --quick leaves the naive tf-keras-vis rows out
            assert row["naive"] is None and row["ratio"] is None, row
        for path in ("naive", "pneumo") if row["name"] not in untimed else ("pneumo",):
            stats = row[path]
            assert stats["n"] == 1
            assert math.isfinite(stats["p50"]) and 0 < stats["p50"] <= stats["p95"], row
        assert row["name"] in untimed or row["ratio"] > 0
    pacs = {name for name in names if name.startswith("PACS: search")}
    if results["skipped"]:  # Orthanc is not installed here: the PACS rows say why they are not
        assert "Orthanc" in results["skipped"]["PACS rows"] and not pacs
    else:
        assert pacs == {"PACS: search + retrieve + read, 3 studies (one 2000x2500 16-bit CR "
                        "each) from Orthanc on loopback"}
        assert "PACS: the same with --send, 3 studies" in names
    targets = {row["name"]: row["target"] for row in results["rows"] if row["met"] is not None}
    assert set(targets) == {"prediction, 1 image", "prediction, batch of 3",
                            "batch of 3 files with CAMs, end to end", "cold start to model ready",
                            "decode + preprocess, 2000x2000 16-bit PNG",
                            "decode + preprocess, 2000x2500 JPEG",
                            "audit record of one reading (SQLite)"} | pacs
    assert results["end_to_end_parts_ms"] and all(
        ms > 0 for ms in results["end_to_end_parts_ms"].values())
    assert results["machine"]["runtime"] in ("openvino", "keras")
    agreement = results["agreement"]
    if agreement is not None:  # the shared test set is here: the runtime agrees with Keras
        assert agreement["images"] == 24 and agreement["max_abs_dp"] <= 1e-5
    assert results["runtimes"] == []  # --quick does not time the candidate runtimes
    assert results["bench_process_peak_rss_mb"] > 0
    assert results["tracing"]["CamExplainer._run"] == results["tracing"]["Predictor._predict"] == 1
    printed = capsys.readouterr().out
    assert "naive/pneumo" in printed and str(out) in printed and "not timed in this run" in printed


def test_the_naive_path_reads_a_file(monkeypatch, bundled_model_dir):
    """The full run's naive rows (left out of --quick): decode + predict + tf-keras-vis Grad-CAM."""
    bench = _bench_module(monkeypatch)
    from pneumo.models.classifier import load_model

    model = load_model(bundled_model_dir / "pneumo.keras")
    [(name, probability, cam)] = bench.naive_read(model, [("a.png", bench.png16_bytes(300, 300))])
    assert name == "a.png" and 0.0 <= probability <= 1.0 and cam.shape == (7, 7)


def test_the_pacs_rows_say_why_they_are_skipped_without_orthanc(monkeypatch, tmp_path):
    bench = _bench_module(monkeypatch)
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import pacs_server

    monkeypatch.setattr(pacs_server.shutil, "which", lambda *args, **kwargs: None)
    rows, reason = bench.pacs_rows(None, None, 3, bench.QUICK)
    assert rows == [] and "Orthanc and its DICOMweb plugin are not installed" in reason


def test_an_ensemble_is_held_to_issue_25s_budget_and_one_model_to_issue_12s(monkeypatch):
    bench = _bench_module(monkeypatch)
    single, ensemble = bench.speed_targets(0), bench.speed_targets(5)
    assert (single.one_image_ms, single.batch_per_image_ms, single.end_to_end_ms) == (8, 5, 800)
    assert (ensemble.one_image_ms, ensemble.batch_per_image_ms, ensemble.end_to_end_ms,
            ensemble.cold_start_ms) == (40, 30, 1500, 3000)
