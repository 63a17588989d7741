"""Replicas behind nginx (deploy/nginx.conf, docs/deployment.md): two Streamlit replicas on
loopback, Debian's nginx in front of them with the shipped configuration (only the replica
ports and the listen address changed), and one X-ray read through nginx in headless Chromium.

Checks what a Streamlit app needs from the load balancer: the WebSocket (/_stcore/stream) is
proxied, every request of one browser (page, WebSocket, upload) reaches the same replica (the
sticky cookie), other browsers are spread over both replicas, and the health path answers.
Skipped, with the reason, where nginx, Chromium or Playwright is missing
(tools/run_tests.sh installs nginx and Chromium as root). Everything started is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, png_bytes, synthetic_xray

from pneumo import config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
REPLICA_LINES = ("127.0.0.1:8501", "127.0.0.1:8502")  # the shipped file's replica addresses

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("bundled_model_dir")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def _wait_ok(url: str, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: the process ended ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def site_config(text: str, replica_ports: list[int], port: int) -> str:
    """The shipped configuration with the test's replica ports and listen address, nothing else
    changed (each replaced line must be there exactly once, so the file cannot drift)."""
    for line, replica in zip(REPLICA_LINES, replica_ports):
        assert text.count(f"server {line} ") == 1, f"deploy/nginx.conf lost its {line} replica line"
        text = text.replace(f"server {line} ", f"server 127.0.0.1:{replica} ")
    assert text.count("    listen 80;") == 1, "deploy/nginx.conf lost its 'listen 80;'"
    return text.replace("    listen 80;", f"    listen 127.0.0.1:{port};")


def main_config(prefix: Path, site: Path) -> str:
    """A whole nginx configuration in ``prefix`` (pid, logs, temporary files) including ``site``
    inside ``http`` as Debian's /etc/nginx/conf.d/ files are; the access log names the replica
    each request went to."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may write the temp folders
    temps = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    log_format replica '$request_uri $upstream_addr $cookie_pneumo_replica';
    access_log {prefix / "access.log"} replica;
{temps}
    include {site};
}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx not installed (tools/run_tests.sh installs Debian's nginx as root)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    work = tmp_path_factory.mktemp("deploy")
    started: list[subprocess.Popen] = []
    try:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'netguard'}{os.pathsep}{ROOT}",
               "PNEUMO_NET_LOG": str(work / "net.log"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        replicas = [_free_port(), _free_port()]
        for i, replica in enumerate(replicas):
            log = work / f"replica{i}.log"
            started.append(subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
                 "--server.port", str(replica), "--server.address", "127.0.0.1"],
                cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT))
        for i, replica in enumerate(replicas):
            _wait_ok(f"http://127.0.0.1:{replica}/_stcore/health", 120, started[i],
                     work / f"replica{i}.log")

        prefix = work / "nginx"
        prefix.mkdir()
        port = _free_port()
        site = prefix / "pneumo.conf"
        site.write_text(site_config(NGINX_CONF.read_text(), replicas, port))
        conf = prefix / "nginx.conf"
        conf.write_text(main_config(prefix, site))
        checked = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(conf)],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        log = prefix / "stderr.log"
        started.append(subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf),
                                         "-g", "daemon off;"],
                                        stdout=log.open("w"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        _wait_ok(f"{url}/_stcore/health", 30, started[-1], log)
        yield {"url": url, "replicas": replicas, "access_log": prefix / "access.log",
               "work": work}
    finally:
        for process in reversed(started):  # nginx first, then the replicas
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _access(cluster) -> list[tuple[str, str, str]]:
    rows = []
    for line in cluster["access_log"].read_text().splitlines():
        uri, upstream, cookie = (line.split(" ") + ["", ""])[:3]
        rows.append((uri, upstream, cookie))
    return rows


def test_health_path_and_the_sticky_cookie(cluster):
    with urllib.request.urlopen(f"{cluster['url']}/_stcore/health", timeout=10) as answer:
        assert answer.read() == b"ok"
        cookies = [c for c in answer.headers.get_all("Set-Cookie") or []
                   if c.startswith("pneumo_replica=")]
    assert len(cookies) == 1 and "HttpOnly" in cookies[0]
    cookie = cookies[0]
    # a browser that sends the cookie back is not given a new one, and stays on one replica
    value = cookie.split(";")[0].split("=", 1)[1]
    for _ in range(4):
        request = urllib.request.Request(f"{cluster['url']}/_stcore/health",
                                         headers={"Cookie": f"pneumo_replica={value}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert not any(c.startswith("pneumo_replica=")
                           for c in answer.headers.get_all("Set-Cookie") or [])
    time.sleep(0.5)  # the access log is written after the response
    mine = {up for uri, up, c in _access(cluster) if c == value}
    assert len(mine) == 1
    # browsers with other cookies are spread over both replicas
    for i in range(24):
        request = urllib.request.Request(f"{cluster['url']}/_stcore/health",
                                         headers={"Cookie": f"pneumo_replica=probe{i}"})
        urllib.request.urlopen(request, timeout=10).read()
    time.sleep(0.5)
    used = {up for uri, up, c in _access(cluster) if c.startswith("probe")}
    assert used == {f"127.0.0.1:{p}" for p in cluster["replicas"]}


def _an_xray() -> tuple[str, bytes]:
    folder = config.SHARED_DATA_DIR / "test" / "PNEUMONIA"
    files = sorted(folder.glob("*.jpeg"))[:1] if folder.exists() else []
    if files:
        return files[0].name, files[0].read_bytes()
    return "synthetic_0.png", png_bytes(synthetic_xray(400, 0))


def test_an_xray_is_read_through_nginx_in_chromium(cluster):
    from playwright.sync_api import sync_playwright

    name, data = _an_xray()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(cluster["url"])
            page.locator('input[type="file"]').first.wait_for(state="attached", timeout=120_000)
            page.locator('input[type="file"]').set_input_files([{
                "name": name, "mimeType": "image/png" if name.endswith(".png") else "image/jpeg",
                "buffer": data}])
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=\"stMetricValue\"]').length >= 1",
                timeout=180_000)
            shown = page.locator('[data-testid="stMetricValue"]').first.inner_text()
            assert shown.endswith("%")
            assert page.get_by_text(name).count() >= 1
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        finally:
            browser.close()
    time.sleep(0.5)
    value = cookies["pneumo_replica"]
    mine = [(uri, up) for uri, up, c in _access(cluster) if c == value]
    assert any(uri.startswith("/_stcore/stream") for uri, _ in mine)  # the WebSocket went through
    assert any(uri.startswith("/_stcore/upload_file") for uri, _ in mine)  # and the upload
    assert len({up for _, up in mine}) == 1  # all of it to one replica
