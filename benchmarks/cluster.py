"""Images per second of the batch CLI's engines on the same files: the in-process engine, the Ray
engine with 1 and 2 workers on a Ray started for the run, and the Ray engine on a local two-node
cluster (``ray.cluster_utils.Cluster``, both nodes on 127.0.0.1, one CPU each), with Ray's start-up
reported apart; and whether every engine gave the same rows.

    python benchmarks/cluster.py [--source DIR] [--out benchmarks/cluster_results.json]

SOURCE defaults to the 624 official test images (``../shared/data/chest_xray/test``, read where
they are, never copied). Each engine runs as the command a user types
(``python -m pneumo.predict SOURCE --out ... [--engine ray ...]``) in its own process; the figures
are the ones it prints ("This run: N files in T s: start-up (to the models loaded) S s, then R
images/s"): R counts every file over the time after the models were loaded (for the Ray engine,
in its first worker), so start-up (Ray's and the models') is apart. The in-process engine runs
first and last, and each Ray figure is compared with the mean of those two runs, because on a
shared, loaded machine the speed drifts.

The CPU seconds of every process of a run (the CLI, Ray's servers and workers; a cluster's own
processes counted from the run's start) are read every 0.25 s: CPU per image says what the
engine costs whatever else the machine is doing, where images per second, on a loaded machine,
also say how large a share of the cores a run's processes won.

On one 2-core machine the two local "nodes" share the same 2 cores: this shows identical rows
and the engine's overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pneumo import config  # noqa: E402
from pneumo.cli.rows import COLUMNS, read_rows  # noqa: E402

RUN_LINE = re.compile(r"This run: (\d+) files in ([\d.]+) s: start-up \(to the models loaded\) "
                      r"([\d.]+) s, then ([\d.na]+) images/s")
RAY_LINE = re.compile(r"Ray (?:started on \S+|at \S+) in ([\d.]+) s")
SAMPLE_S = 0.25  # how often the run's processes' CPU times are read (the last 0.25 s are missed)
LOOPBACK = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def run_engine(source: Path, out: Path, extra: list[str], timeout: int = 1800) -> dict:
    """One ``python -m pneumo.predict`` run; its own figures, parsed from what it prints."""
    command = [sys.executable, "-m", "pneumo.predict", str(source), "--out", str(out), *extra]
    load = os.getloadavg()[0]
    me = psutil.Process()
    before = _cpu_seconds(me.children(recursive=True))  # a cluster's processes, already running
    seen: dict[int, float] = {}
    began = time.time()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out_file, stderr=err_file, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        while proc.poll() is None:
            seen.update(_cpu_seconds(me.children(recursive=True)))
            if time.time() - began > timeout:
                proc.kill()
            time.sleep(SAMPLE_S)
        wall = time.time() - began
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    hit = RUN_LINE.search(stdout)
    if hit is None:
        raise RuntimeError(f"no 'This run:' line in:\n{stdout[-2000:]}")
    files, seconds, startup, rate = hit.groups()
    ray_start = RAY_LINE.search(stderr)
    cpu = sum(t - before.get(pid, 0.0) for pid, t in seen.items())
    return {
        "command": " ".join(["python", "-m", "pneumo.predict", "SOURCE", "--out", out.name, *extra]),
        "images": int(files),
        "process_wall_s": round(wall, 2),  # the whole command, Python start and imports included
        "run_s": float(seconds),  # from the CLI's start to the last row written
        "startup_s": float(startup),  # to the models loaded (Ray's start included)
        "ray_start_s": float(ray_start.group(1)) if ray_start else None,
        "images_per_s": float(rate),  # after start-up
        "images_per_s_with_startup": round(int(files) / float(seconds), 2),
        "cpu_s": round(cpu, 1),  # every process of the run (and a cluster's), sampled
        "cpu_ms_per_image": round(1000 * cpu / int(files), 1),  # start-up included
        "load_average_1min_before": round(load, 2),
    }


def _cpu_seconds(processes) -> dict[int, float]:
    """User + system CPU seconds of each process (those that vanish are left out)."""
    out = {}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def compare(rows: list[dict], reference: list[dict]) -> dict:
    """How many rows are identical to the reference's (every column's text), and the largest
    probability difference."""
    by_file = {r["file"]: r for r in reference}
    same = sum(all(r[c] == by_file.get(r["file"], {}).get(c) for c in COLUMNS) for r in rows)
    dp = [abs(float(r["probability_pneumonia"]) - float(by_file[r["file"]]["probability_pneumonia"]))
          for r in rows if r["probability_pneumonia"] and r["file"] in by_file]
    return {"rows": len(rows), "identical_rows": same, "same_files_in_order":
            [r["file"] for r in rows] == [r["file"] for r in reference],
            "max_abs_dp": max(dp, default=0.0)}


def start_cluster():
    """Two Ray nodes on 127.0.0.1, one CPU each, no dashboard (Ray's test utility)."""
    os.environ.update(LOOPBACK)  # before Ray is imported: loopback only, no usage statistics
    from ray.cluster_utils import Cluster

    began = time.time()
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster, time.time() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=config.SHARED_DATA_DIR / "test")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cluster_results.json")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"No images at {args.source}; give --source DIR.", file=sys.stderr)
        return 1
    os.environ.update(LOOPBACK)
    results: dict = {
        "what": "images per second of python -m pneumo.predict's engines on the same files; "
                "images_per_s counts every file over the time after the models were loaded",
        "source": str(args.source),
        "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "platform": platform.platform()},
        "note": "taken on a shared 2-core machine while other work (a model training) ran: "
                "compare the ratios measured in this run, not the absolute figures across runs",
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="pneumo-cluster-") as tmp:
        tmp = Path(tmp)

        def one(name: str, extra: list[str]) -> None:
            print(f"{name} ...", file=sys.stderr, flush=True)
            results["runs"][name] = run_engine(args.source, tmp / f"{name}.csv", extra)
            print(f"  {results['runs'][name]}", file=sys.stderr, flush=True)

        one("local_first", [])
        one("ray_1_worker", ["--engine", "ray", "--workers", "1"])
        one("ray_2_workers", ["--engine", "ray", "--workers", "2"])
        cluster, cluster_start = start_cluster()
        try:
            one("ray_two_node_cluster", ["--engine", "ray", "--address", cluster.address,
                                         "--workers", "2"])
        finally:
            cluster.shutdown()
        results["runs"]["ray_two_node_cluster"]["cluster_start_s"] = round(cluster_start, 2)
        one("local_last", [])

        reference = read_rows(tmp / "local_first.csv")
        for name, run in results["runs"].items():
            run["rows_vs_local_first"] = compare(read_rows(tmp / f"{name}.csv"), reference)

    local = [results["runs"][k]["images_per_s"] for k in ("local_first", "local_last")]
    local_rate = sum(local) / len(local)
    results["local_images_per_s_mean"] = round(local_rate, 2)
    results["ratio_to_local"] = {name: round(run["images_per_s"] / local_rate, 3)
                                 for name, run in results["runs"].items()
                                 if name.startswith("ray")}
    results["ratio_to_local_with_startup"] = {
        name: round(run["images_per_s_with_startup"] / (sum(
            results["runs"][k]["images_per_s_with_startup"] for k in ("local_first", "local_last"))
            / 2), 3) for name, run in results["runs"].items() if name.startswith("ray")}
    results["cpu_ms_per_image_ratio_to_local"] = {
        name: round(run["cpu_ms_per_image"] / (sum(
            results["runs"][k]["cpu_ms_per_image"] for k in ("local_first", "local_last")) / 2), 3)
        for name, run in results["runs"].items() if name.startswith("ray")}
    results["target"] = ("Ray engine on this box, start-up excluded: >= 0.8x the in-process "
                         "engine's images per second, identical rows")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("local_images_per_s_mean", "ratio_to_local",
                                              "ratio_to_local_with_startup",
                                              "cpu_ms_per_image_ratio_to_local")}, indent=2))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
