"""Concurrency: several browser sessions uploading at once to one pneumo server (loopback only).

    python benchmarks/load_test.py [--sessions 8] [--images 10] [--timeout 600]

Starts ``streamlit run streamlit_app.py`` on a free loopback port, reads the images once in a
single session (the reference), then opens N sessions in headless Chromium that all upload the
same images at the same moment. Checks that every session shows exactly the reference
probabilities, and prints the slowest session's time to all results and the server's peak
memory. Bounded: every wait has a timeout and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHARED_TEST = ROOT.parent / "shared" / "data" / "chest_xray" / "test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_peak_mb(pid: int) -> float:
    """VmHWM of the server process (its peak resident memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def images(n: int) -> list[tuple[str, bytes]]:
    files = sorted(SHARED_TEST.glob("*/*.jpeg"))[::23][:n]
    if len(files) < n:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import png_bytes, synthetic_xray

        return [(f"synthetic_{i}.png", png_bytes(synthetic_xray(400, i))) for i in range(n)]
    return [(p.name, p.read_bytes()) for p in files]


def upload(page, files) -> None:
    page.locator('input[type="file"]').set_input_files([
        {"name": n, "mimeType": "image/png" if n.endswith(".png") else "image/jpeg", "buffer": b}
        for n, b in files])


def shown_results(page) -> dict[str, str]:
    """File name -> probability text, as the page shows them."""
    return page.evaluate("""() => {
        const out = {};
        for (const h of document.querySelectorAll('h4')) {
            const card = h.closest('[data-testid="stVerticalBlock"]');
            const v = card && card.querySelector('[data-testid="stMetricValue"]');
            if (v) out[h.innerText.trim()] = v.innerText.trim();
        }
        return out; }""")


def wait_all(page, n: int, timeout_s: float) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=\"stMetricValue\"]').length >= n",
        arg=n, timeout=timeout_s * 1000)


def open_reader(page, url: str) -> None:
    page.goto(url)
    page.get_by_text("Chest X-rays (PNG").first.wait_for(timeout=120_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole batch")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        files = images(args.images)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            ref_page = browser.new_page(viewport={"width": 1300, "height": 900})
            open_reader(ref_page, url)
            started = time.perf_counter()
            upload(ref_page, files)
            wait_all(ref_page, len(files), args.timeout)
            single = time.perf_counter() - started
            reference = shown_results(ref_page)
            ref_page.close()

            pages = [browser.new_page(viewport={"width": 1300, "height": 900})
                     for _ in range(args.sessions)]
            for page in pages:
                open_reader(page, url)
            started = time.perf_counter()
            for page in pages:
                upload(page, files)
            finish, mismatches = [], 0
            for page in pages:
                wait_all(page, len(files), args.timeout)
                finish.append(time.perf_counter() - started)
                mismatches += shown_results(page) != reference
            browser.close()
        peak = server_peak_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    result = {"sessions": args.sessions, "images_per_session": len(files),
              "single_session_s": round(single, 2), "slowest_session_s": round(max(finish), 2),
              "fastest_session_s": round(min(finish), 2), "server_peak_rss_mb": round(peak),
              "sessions_matching_reference": args.sessions - mismatches,
              "reference_results": len(reference)}
    print(json.dumps(result, indent=2))
    (Path(__file__).with_name("load_results.json")).write_text(json.dumps(result, indent=2))
    return 0 if mismatches == 0 and len(reference) == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
