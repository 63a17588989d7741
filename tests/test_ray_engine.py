"""The Ray engine of the batch CLI (``python -m pneumo.predict ... --engine ray``): the same rows as
the in-process engine on a local Ray and on a local two-node cluster (both on 127.0.0.1), a
resumed run that skips what is done, Parquet out, and no Ray unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, jpeg_bytes, png_bytes, synthetic_xray

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # before Ray is imported: pneumo's promise
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the test cluster stays on 127.0.0.1 (see
# pneumo.cli.ray_engine.KEEP_LOOPBACK_ENV): set before this process imports Ray and starts it

from pneumo import config  # noqa: E402
from pneumo.cli import predict, rows  # noqa: E402

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-cluster.txt")

GOOD = ("a.png", "b.jpg", "scans/c.png", "scans/deeper/d.jpeg", "e.png")
BAD = "scans/broken.png"
NUMBERS = {"probability_pneumonia": 1.5e-6, "bundled_probability": 1.5e-6,  # |dp| <= 1e-6, printed
           "gradcam_in_lungs": 1.5e-4, "older_score": 1.5e-4}  # to 6 (4) decimals: one last digit


def _read(path: Path) -> list[dict[str, str]]:
    return rows.read_rows(path)


def assert_same_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    """Same files in the same order; every text column equal, every number within its printing."""
    assert [r["file"] for r in got] == [r["file"] for r in expected]
    for g, e in zip(got, expected):
        assert list(g) == list(rows.COLUMNS)
        for column in rows.COLUMNS:
            if column in NUMBERS and g[column] and e[column]:
                assert abs(float(g[column]) - float(e[column])) <= NUMBERS[column], (g["file"], column)
            else:
                assert g[column] == e[column], (g["file"], column, g[column], e[column])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Five test-made X-rays (three in subfolders, PNG and JPEG) and a truncated PNG."""
    root = tmp_path_factory.mktemp("ray_xrays")
    for seed, name in enumerate(GOOD):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = synthetic_xray(256 + 32 * seed, seed)
        path.write_bytes(jpeg_bytes(img) if name.endswith((".jpg", ".jpeg")) else png_bytes(img))
    (root / BAD).write_bytes(png_bytes(synthetic_xray(256, 9))[:200])
    return root


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    """An empty site folder of this module's own (another module's test may leave a site file in
    the shared one): no site calibration, for the reference run and the Ray runs alike."""
    return tmp_path_factory.mktemp("ray_no_site")


@pytest.fixture(scope="module")
def local_rows(folder, site_dir, tmp_path_factory, bundled_model_dir) -> list[dict[str, str]]:
    """The in-process engine's rows (the reference), in batches of 2."""
    out = tmp_path_factory.mktemp("ray_local") / "local.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(config.SITE_DIR_ENV, str(site_dir))
        assert predict.main([str(folder), "--out", str(out), "--batch-size", "2",
                             "--threshold", "0.5"]) == 0
    return _read(out)


@pytest.fixture(autouse=True)
def _no_site_file_and_no_ray_left_behind(site_dir, monkeypatch):
    monkeypatch.setenv(config.SITE_DIR_ENV, str(site_dir))
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_reference_rows_include_the_unreadable_file(local_rows):
    assert sorted(r["file"] for r in local_rows) == sorted((*GOOD, BAD))
    bad = next(r for r in local_rows if r["file"] == BAD)
    assert bad["error"] and bad["decision"] == predict.NOT_READ


def test_ray_engine_gives_the_same_rows(folder, local_rows, tmp_path, capsys):
    out = tmp_path / "ray.csv"
    assert predict.main([str(folder), "--out", str(out), "--batch-size", "2", "--threshold", "0.5",
                         "--engine", "ray", "--workers", "2"]) == 0
    assert_same_rows(_read(out), local_rows)
    printed = capsys.readouterr()
    assert f"Read {len(GOOD)} of {len(GOOD) + 1} files" in printed.out
    assert "(ray engine)" in printed.out
    assert "Reading (ray)" in printed.err  # the progress line
    assert "started on 127.0.0.1" in printed.err


def test_a_resumed_run_skips_the_files_already_out_and_writes_parquet(folder, local_rows, tmp_path,
                                                                      capsys):
    out = tmp_path / "ray.parquet"
    kept = [dict(r) for r in local_rows[:3]]
    kept[0]["notes"] = "kept from the first run"  # a re-read file would lose this
    with rows.RowSink(out) as sink:
        sink.write(kept)
    assert predict.main([str(folder), "--out", str(out), "--batch-size", "2", "--threshold", "0.5",
                         "--engine", "ray", "--workers", "1", "--resume"]) == 0
    got = _read(out)
    assert got[0]["notes"] == "kept from the first run"
    got[0]["notes"] = local_rows[0]["notes"]
    assert_same_rows(got, local_rows)
    printed = capsys.readouterr()
    assert f"This run: {len(local_rows) - 3} files" in printed.out
    assert "3 files already in" in printed.err
    assert not out.with_name(out.name + ".partial").exists()


def test_the_local_engine_resumes_a_csv_cut_mid_row(folder, local_rows, tmp_path, capsys):
    out = tmp_path / "local.csv"
    with rows.RowSink(out) as sink:
        sink.write(local_rows[:2])
    with out.open("a", encoding="utf-8") as f:
        f.write("scans/c.png,0.12")  # a run stopped while writing a row
    assert predict.main([str(folder), "--out", str(out), "--batch-size", "2", "--threshold", "0.5",
                         "--resume"]) == 0
    assert_same_rows(_read(out), local_rows)
    assert f"This run: {len(local_rows) - 2} files" in capsys.readouterr().out
    assert predict.main([str(folder), "--out", str(out), "--resume"]) == 0
    assert "nothing to read" in capsys.readouterr().out


def test_a_local_two_node_cluster_gives_the_same_rows(folder, local_rows, tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster.csv"
        assert predict.main([str(folder), "--out", str(out), "--batch-size", "2", "--threshold",
                             "0.5", "--engine", "ray", "--address", cluster.address,
                             "--workers", "2"]) == 0
        assert_same_rows(_read(out), local_rows)
        assert f"at {cluster.address}" in capsys.readouterr().err
        assert len(cluster.list_all_nodes()) == 2
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


LISTENING = """
import os, psutil
from pneumo.cli import ray_engine
ray = ray_engine.import_ray()
ray_engine.start_local(ray, num_cpus=1)
try:
    me = psutil.Process()
    pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
    ports = [c.laddr for c in psutil.net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.pid in pids]
finally:
    ray.shutdown()
print(len(ports), sorted({a.ip for a in ports}))
"""


def test_the_local_ray_listens_on_loopback_only():
    """Ray has no authentication that pneumo relies on: a Ray the engine starts must not face
    any network (every listening socket of Ray's processes on 127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run([sys.executable, "-c", LISTENING], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, addresses = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 3  # the GCS, the raylet, this driver at least
    assert set(eval(addresses)) <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


def test_without_ray_installed_the_engine_says_how_to_get_it(folder, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray"
                        else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(folder), "--out", str(tmp_path / "x.csv"), "--engine", "ray"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "pip install -e .[cluster]" in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()


def test_ray_options_need_the_ray_engine(folder, tmp_path):
    with pytest.raises(SystemExit):
        predict.main([str(folder), "--out", str(tmp_path / "x.csv"), "--workers", "2"])


def test_nothing_starts_or_imports_ray_unless_asked(folder, tmp_path, bundled_model_dir):
    """The in-process engine, the app's modules and ``import pneumo`` leave Ray alone."""
    code = (
        "import sys\n"
        "import pneumo, pneumo.cli.predict, pneumo.reading.reader, pneumo.app\n"
        f"argv = [{str(folder)!r}, '--out', {str(tmp_path / 'out.csv')!r}]\n"
        "assert pneumo.cli.predict.main(argv) == 0\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
