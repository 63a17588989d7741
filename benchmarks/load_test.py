"""Concurrency: several browser sessions uploading at once to one pneumo server (loopback only).

    python benchmarks/load_test.py [--sessions 8] [--images 10] [--timeout 600] [--out FILE]
                                   [--profile FILE] [--profile-phase single|all] [--no-cli]
                                   [--nice N] [--fresh-browsers]

Starts ``streamlit run streamlit_app.py`` on a free loopback port, reads two images in a first
session (warm-up: the lung and quality models load on the first reading, pandas on the first
worklist), reads the images once
in a single session (the reference), then opens N sessions in headless Chromium that all upload the
same images at the same moment. Each session is a reader's own browser (context); by default a
returning reader's, which read the same films in an earlier session (not measured), so the
page's scripts are in its cache as they are for anyone who used pneumo before (Streamlit serves
them ``immutable`` for a year); ``--fresh-browsers``: first visits, whose browsers fetch about
40 scripts during the upload (what the figures before this option measured). Checks that
every session shows exactly the reference probabilities, and prints the slowest session's time
to all results and the server's peak memory. Bounded: every wait has a
timeout and the server is stopped at the end.

Two clocks: the browser's (upload started -> every result shown on the page) and the server's
(the script run that received the upload started -> that session's results ready, logged by
the server through :func:`pneumo.models.serving.log_reading`, which this script turns on for the server
it starts with ``PNEUMO_TIMING_LOG``; the log holds an anonymous session number, image counts
and times only, and is deleted at the end). The target (issue 12) is on the server's clock:
eight headless browsers on the same cores also load the CPU.

It also reads the server process's CPU time (user + system, all threads) over the single session
and over the N sessions. The N sessions' CPU seconds divided by the cores usable, over the
single session's server time (``work_floor_over_single``), is how long the whole test's work
takes on these cores at the least: the slowest session waits for most of it (every session's
reading; the drawing of other sessions' cards could in principle come after).

Beside the server's CPU per image it puts the batch CLI's on the same files
(``cli_cpu_per_image_ms``): ``python -m pneumo.predict`` run on a folder holding the test's
images once per session (80 files for 8 x 10, the same bytes under different names) and on a
folder of one of them; the difference of the two runs' CPU seconds (user + system, the child
process and its threads) over the difference in files is the CLI's CPU per image with its
start-up (imports, model loading) taken out. CPU seconds, not wall time, so a loaded machine
moves the figures less; the load average is recorded. ``--profile FILE`` records the server
with py-spy (Python CPU: the thread holding the GIL) during the single session, or the N
sessions with ``--profile-phase all`` (a flame graph for .svg, else collapsed stacks; needs
``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the server process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def images(n: int) -> list[tuple[str, bytes]]:
    files = sorted(SHARED_TEST.glob("*/*.jpeg"))[::23][:n]
    if len(files) < n:
        import importlib.util  # the test suite's image helpers, without editing sys.path

        spec = importlib.util.spec_from_file_location("_pneumo_test_helpers", ROOT / "tests" / "conftest.py")
        helpers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(helpers)
        png_bytes, synthetic_xray = helpers.png_bytes, helpers.synthetic_xray

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
        for (const h of document.querySelectorAll('h3[id^="card-"], h4')) {
            const card = h.closest('[data-testid="stVerticalBlock"]');
            const v = card && card.querySelector('[data-testid="stMetricValue"]');
            if (v) out[h.innerText.trim()] = v.innerText.trim();
        }
        return out; }""")


NOT_SHOWN = "As uploaded: no reading shown"  # an out-of-scope film's card (no probability)


def wait_all(page, n: int, timeout_s: float) -> None:
    """Until ``n`` cards show their result: a probability, or an out-of-scope film's image."""
    page.wait_for_function(
        """([n, hidden]) => document.querySelectorAll('[data-testid="stMetricValue"]').length
                           + document.body.textContent.split(hidden).length - 1 >= n""",
        arg=[n, NOT_SHOWN], timeout=timeout_s * 1000, polling=100)


def open_reader(page, url: str) -> None:
    page.goto(url)
    page.locator('input[type="file"]').wait_for(state="attached", timeout=120_000)


VIEWPORT = {"width": 1300, "height": 900}


def warm_or_retry(page, url: str, files, timeout_s: float) -> None:
    """Waits for an unmeasured warming session's results; one that shows none within 2 minutes
    (seen once in a quiet run: eight uploads at once, a page that never got its results and a
    server at rest) is opened again and uploads again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        wait_all(page, len(files), min(timeout_s, 120))
    except PlaywrightTimeout:
        print("load_test: a warming session showed no results in 2 minutes; retried",
              file=sys.stderr)
        open_reader(page, url)
        upload(page, files)
        wait_all(page, len(files), timeout_s)


def nice_browser_groups(nice: int) -> int:
    """Make ``--nice`` reach the browsers: Playwright starts Chromium in a session of its own,
    and with Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) each
    session is a group that gets an equal share of the cores whatever its processes' nice
    values, so eight busy renderers held the server to about one core of two. A group's nice
    is set through any of its processes' ``/proc/PID/autogroup``. Returns how many groups were
    niced (0 without autogroup, or with ``nice`` 0)."""
    import psutil

    mine = Path("/proc/self/autogroup")
    if not nice or not mine.exists():
        return 0
    own, done = mine.read_text().split()[0], set()
    for child in psutil.Process().children(recursive=True):
        try:
            path = Path(f"/proc/{child.pid}/autogroup")
            group = path.read_text().split()[0]
            if group != own and group not in done:
                path.write_text(str(nice))
                done.add(group)
        except (OSError, psutil.Error):
            continue
    return len(done)


def reader_browser(browser, url: str, files, args, warm: bool = True):
    """One reader's browser (its own context: cache, cookies). Unless ``--fresh-browsers``, a
    returning reader's: it has read the same films in an earlier session (``warm``: done here;
    else by the caller), so the page's scripts are in its cache, as Streamlit serves them
    (``immutable``, a year). A fresh browser fetches about 40 of them during its first upload,
    as the elements they draw first appear: once per reader's browser, not per image."""
    context = browser.new_context(viewport=VIEWPORT)
    if warm and not args.fresh_browsers:
        page = context.new_page()
        open_reader(page, url)
        upload(page, files)
        wait_all(page, len(files), args.timeout)
        page.close()
    return context


def server_times(log: Path, sessions: set[int] | None = None) -> dict[int, float]:
    """Per anonymous session in the server's timing log: seconds from its first reading's start
    to its last reading's end (a session whose files came in several script runs counts whole)."""
    return {number: end - start for number, (start, end) in server_spans(log, sessions).items()}


def most_at_once(spans: list[list[float]]) -> int:
    """The most of these (start, end) spans in progress at one moment: how many sessions the
    server was reading for at once (8 when the uploads really came together)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    at_once = best = 0
    for _, step in events:
        at_once += step
        best = max(best, at_once)
    return best


def server_spans(log: Path, sessions: set[int] | None = None) -> dict[int, list[float]]:
    spans: dict[int, list[float]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if sessions is not None and record["session"] not in sessions:
                continue
            span = spans.setdefault(record["session"], [record["start"], record["end"]])
            span[0], span[1] = min(span[0], record["start"]), max(span[1], record["end"])
    return spans


def start_profile(args, pid: int, phase: str) -> subprocess.Popen | None:
    """py-spy on the server during ``phase`` ("single" or "all") when ``--profile`` asks for it.
    ``--gil`` samples only the thread holding the GIL: Python's CPU, without idle threads (whose
    waits this machine's py-spy otherwise counts as running)."""
    if args.profile is None or args.profile_phase != phase:
        return None
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--gil", "--rate", "500",
                            "--output", str(args.profile),
                            "--format", "flamegraph" if args.profile.suffix == ".svg" else "raw"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)  # py-spy attached
    return spy


def stop_profile(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(timeout=60)


def cli_cpu_per_image(files: list[tuple[str, bytes]], copies: int, repeats: int = 3) -> dict:
    """The batch CLI's CPU per image on ``files`` (each ``copies`` times), start-up taken out:
    ``repeats`` times (a run on one file, then on all of them, alternately, on the same folders),
    each repeat's (all - one) / (files - 1); the median is the figure, the spread is given."""
    import resource
    import statistics

    def write(folder: Path, chosen: list[tuple[str, bytes]], times: int) -> Path:
        folder.mkdir()
        for k in range(times):
            for name, data in chosen:
                (folder / f"{k:03d}_{name}").write_bytes(data)
        return folder

    def run(folder: Path, out: Path) -> float:
        out.unlink(missing_ok=True)  # a fresh run, not a resumed one
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "pneumo.predict", str(folder), "--out", str(out)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=1800)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    work = Path(tempfile.mkdtemp(prefix="pneumo-cli-"))
    n = len(files) * copies
    ones, alls, per_image = [], [], []
    try:
        one_dir, many_dir = write(work / "one", files[:1], 1), write(work / "many", files, copies)
        for _ in range(repeats):
            ones.append(run(one_dir, work / "one.csv"))
            alls.append(run(many_dir, work / "many.csv"))
            per_image.append(1000 * (alls[-1] - ones[-1]) / (n - 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"cli_cpu_one_file_s": [round(x, 2) for x in ones], "cli_cpu_files": n,
            "cli_cpu_all_files_s": [round(x, 2) for x in alls],
            "cli_cpu_per_image_runs_ms": [round(x, 1) for x in per_image],
            "cli_cpu_per_image_ms": round(statistics.median(per_image), 1),
            "cli_cpu_per_image_spread_ms": [round(min(per_image), 1), round(max(per_image), 1)],
            "cli_cpu_per_image_how": (
                f"{repeats} repeats of: python -m pneumo.predict on a folder of one file, then on "
                f"a folder of all {n} (CPU s of the child, user + system); each repeat's "
                f"(all - one) / {n - 1}; the median of the repeats, min and max as the spread")}


def browser_cpu() -> dict[tuple[int, float], float]:
    """CPU seconds (user + system) so far of every Chromium process under this one (the test's
    browsers: Playwright's driver starts them), keyed by (pid, start time)."""
    import psutil

    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name().lower():
                times = child.cpu_times()
                out[(child.pid, child.create_time())] = times.user + times.system
        except psutil.Error:
            continue
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or waiting on I/O)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def count_messages(page) -> dict:
    """Counts the Streamlit messages (``ForwardMsg``) the page receives and the HTTP requests it
    makes from now on, by kind: ``new_session`` starts a script run, ``script_finished`` ends
    one; ``delta`` is an element or block drawn; ``upload`` and ``media`` are the file uploads
    and the pictures fetched, ``static`` the page's scripts (Playwright reports a request
    served from the browser's cache too: ``static_over_network`` counts those that were not,
    with bytes over the connection, through Chromium's DevTools protocol)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    counts: dict = {"frames": 0, "bytes": 0, "new_session": 0, "script_finished": 0, "delta": 0,
                    "delta_new_element": 0, "delta_add_block": 0, "other": 0,
                    "http_upload": 0, "http_media": 0, "http_static": 0, "http_other": 0,
                    "http_static_over_network": 0}

    def frame(payload) -> None:
        if isinstance(payload, str):
            return
        counts["frames"] += 1
        counts["bytes"] += len(payload)
        msg = ForwardMsg()
        try:
            msg.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - not a ForwardMsg: counted as a frame only
            return
        kind = msg.WhichOneof("type")
        counts[kind if kind in counts else "other"] += 1
        if kind == "delta":
            sub = msg.delta.WhichOneof("type")
            counts[f"delta_{sub}"] = counts.get(f"delta_{sub}", 0) + 1

    def request(req) -> None:
        path = req.url.split("?")[0]
        counts["http_upload" if "/upload_file" in path else
               "http_media" if "/media/" in path else
               "http_static" if "/static/" in path else "http_other"] += 1

    urls: dict = {}

    def sent(event) -> None:
        urls[event["requestId"]] = event["request"]["url"]

    def loaded(event) -> None:  # bytes over the connection: 0 when the cache answered
        if event.get("encodedDataLength", 0) > 0 and "/static/" in urls.get(event["requestId"], ""):
            counts["http_static_over_network"] += 1

    page.on("websocket", lambda ws: ws.on("framereceived", frame))
    page.on("request", request)
    cdp = page.context.new_cdp_session(page)  # which of those requests the cache answered
    cdp.send("Network.enable")
    cdp.on("Network.requestWillBeSent", sent)
    cdp.on("Network.loadingFinished", loaded)
    counts["_cdp"] = cdp  # kept alive while counting
    return counts


def spread(values: list[float], digits: int = 1) -> list[float]:
    return [round(min(values), digits), round(max(values), digits)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole batch")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("load_results.json"),
                        help="where the results go (default: benchmarks/load_results.json)")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="py-spy profile of the server during the single session (a flame "
                             "graph for .svg, else collapsed stacks)")
    parser.add_argument("--profile-phase", choices=("single", "all"), default="single",
                        help="profile the single session (default) or the N sessions")
    parser.add_argument("--no-cli", action="store_true", help="skip the batch CLI's figures")
    parser.add_argument("--fresh-browsers", action="store_true",
                        help="every session in a browser that never opened pneumo (it fetches "
                             "the page's scripts during the upload); default: returning readers, "
                             "whose browsers have them cached")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the browsers (and the CLI) N steps nicer than the server, which "
                             "then does not compete with the test's own browsers for the cores "
                             "(in use they run on the readers' machines); with autogroup "
                             "scheduling the browsers' group is niced too; default 0")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times the N sessions read at once on the same server (new pages "
                             "each time); figures are the rounds' medians, with their spread")
    parser.add_argument("--cli-repeats", type=int, default=3,
                        help="times the batch CLI runs on the same files (median, spread)")
    args = parser.parse_args(argv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    from playwright.sync_api import sync_playwright

    from pneumo.models.runtime import usable_cpus
    from pneumo.models.serving import TIMING_LOG_ENV

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_dir = Path(tempfile.mkdtemp(prefix="pneumo-load-"))
    log = log_dir / "timing.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", TIMING_LOG_ENV: str(log)})
    if args.nice:  # the browsers (and the CLI run) below the server, as on separate machines
        os.nice(args.nice)
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
            niced_groups = nice_browser_groups(args.nice)
            # warm-up: the first reading loads the lung and quality models, the first worklist
            # imports pandas (once per server)
            warm_page = browser.new_page(viewport=VIEWPORT)
            open_reader(warm_page, url)
            upload(warm_page, files[-2:])
            wait_all(warm_page, 2, args.timeout)
            warm_page.close()
            ref_context = reader_browser(browser, url, files, args)
            warm_up = set(server_times(log))  # sessions not measured
            ref_page = ref_context.new_page()
            traffic = count_messages(ref_page)
            open_reader(ref_page, url)
            time.sleep(1)  # the page's first run over
            page_load = {k: v for k, v in traffic.items() if k != "_cdp"}
            spy = start_profile(args, server.pid, "single")
            cpu_before = server_cpu_s(server.pid)
            started = time.perf_counter()
            upload(ref_page, files)
            wait_all(ref_page, len(files), args.timeout)
            single = time.perf_counter() - started
            time.sleep(1)  # the run's end (the page is shown before the script run is over)
            cpu_single = server_cpu_s(server.pid) - cpu_before
            stop_profile(spy)
            per_upload = {k: v - page_load.get(k, 0) for k, v in traffic.items() if k != "_cdp"}
            reference = shown_results(ref_page)
            not_shown = ref_page.evaluate("h => document.body.textContent.split(h).length - 1",
                                          NOT_SHOWN)
            ref_page.close()
            server_single = {k: t for k, t in server_times(log).items() if k not in warm_up}

            rounds = []
            contexts = []
            for _ in range(args.rounds):
                if args.fresh_browsers or not contexts:
                    for context in contexts:
                        context.close()
                    contexts = [reader_browser(browser, url, files, args, warm=False)
                                for _ in range(args.sessions)]
                    if not args.fresh_browsers:  # all at once: one session each, not measured
                        warming = [context.new_page() for context in contexts]
                        for page in warming:
                            open_reader(page, url)
                        for page in warming:
                            upload(page, files)
                        for page in warming:
                            warm_or_retry(page, url, files, args.timeout)
                            page.close()
                known = set(server_times(log))
                pages = [context.new_page() for context in contexts]
                for page in pages:
                    open_reader(page, url)
                spy = start_profile(args, server.pid, "all") if not rounds else None
                time.sleep(0.5)  # the pages' first runs over
                cpu_before, chromium_before = server_cpu_s(server.pid), browser_cpu()
                busy_before = machine_busy_s()
                started = time.perf_counter()
                for page in pages:
                    upload(page, files)
                finish, mismatches = [], 0
                for page in pages:
                    wait_all(page, len(files), args.timeout)
                    finish.append(time.perf_counter() - started)
                    mismatches += shown_results(page) != reference
                time.sleep(1)  # the last runs' ends
                wall = time.perf_counter() - started
                cpu_all, chromium_after = server_cpu_s(server.pid) - cpu_before, browser_cpu()
                busy = machine_busy_s() - busy_before
                stop_profile(spy)
                chromium = sum(t - chromium_before.get(k, 0.0) for k, t in chromium_after.items())
                for page in pages:
                    page.close()
                spans = {k: v for k, v in server_spans(log).items() if k not in known}
                rounds.append({"finish": finish, "mismatches": mismatches, "cpu": cpu_all,
                               "browsers_cpu": chromium, "busy": busy, "wall": wall,
                               "server": {k: end - start for k, (start, end) in spans.items()},
                               "at_once": most_at_once(list(spans.values()))})
            browser.close()
        peak = server_peak_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(log_dir, ignore_errors=True)

    import statistics

    med = statistics.median
    cores = usable_cpus()
    n_images = args.sessions * len(files)
    one = max(server_single.values()) if server_single else float("nan")
    slowest = [max(r["server"].values()) for r in rounds if r["server"]]
    per_image = [1000 * r["cpu"] / n_images for r in rounds]
    mismatches = sum(r["mismatches"] for r in rounds)
    result = {"sessions": args.sessions, "images_per_session": len(files), "rounds": args.rounds,
              "single_session_s": round(single, 2),
              "slowest_session_s": round(med([max(r["finish"]) for r in rounds]), 2),
              "fastest_session_s": round(med([min(r["finish"]) for r in rounds]), 2),
              "server_single_session_s": round(one, 2),
              "server_slowest_session_s": round(med(slowest), 2) if slowest else None,
              "server_slowest_session_runs_s": [round(x, 2) for x in slowest],
              "server_fastest_session_s": round(med([min(r["server"].values()) for r in rounds
                                                     if r["server"]]), 2) if slowest else None,
              "server_sessions_logged": [len(r["server"]) for r in rounds],
              "server_sessions_read_at_once": [r["at_once"] for r in rounds],
              "server_slowest_over_single": round(med(slowest) / one, 2) if slowest else None,
              "work_floor_over_single": round(med([r["cpu"] for r in rounds]) / cores / one, 2),
              "target": "server_slowest_session_s <= 3 (issue 22)",
              "met": bool(slowest) and med(slowest) <= 3.0,
              "server_peak_rss_mb": round(peak),
              "cores": cores,
              "server_cpu_single_session_s": round(cpu_single, 2),
              "server_cpu_per_image_single_ms": round(1000 * cpu_single / len(files), 1),
              "server_cpu_all_sessions_runs_s": [round(r["cpu"], 2) for r in rounds],
              "server_cpu_per_image_runs_ms": [round(x, 1) for x in per_image],
              "server_cpu_per_image_all_ms": round(med(per_image), 1),
              "server_cpu_per_image_spread_ms": spread(per_image),
              "server_cpu_per_image_how": (
                  f"server process CPU s (user + system, all threads) from the {args.sessions} "
                  f"sessions' uploads to 1 s after the last result shown, over {n_images} images; "
                  f"the median of {args.rounds} rounds on the same server, min and max as the "
                  "spread"),
              "browsers_cpu_all_sessions_runs_s": [round(r["browsers_cpu"], 2) for r in rounds],
              "machine_busy_cpu_all_sessions_runs_s": [round(r["busy"], 2) for r in rounds],
              "all_sessions_wall_runs_s": [round(r["wall"], 2) for r in rounds],
              "browsers_share_of_busy_cpu": round(med([r["browsers_cpu"] / r["busy"]
                                                       for r in rounds]), 2),
              "server_share_of_busy_cpu": round(med([r["cpu"] / r["busy"] for r in rounds]), 2),
              "cpu_shares_how": ("Chromium processes' CPU s (psutil, every process under this "
                                 "script) and the server's, over the machine's busy CPU s "
                                 "(psutil.cpu_times, all cores) during the same interval"),
              "single_session_traffic": per_upload,
              "single_session_traffic_how": (
                  "what the reference session's page received (Streamlit ForwardMsg frames over "
                  "the WebSocket, by kind: new_session = one script run started) and requested "
                  "(HTTP: uploads, media) from the upload to its results shown"),
              "sessions_matching_reference": args.sessions * args.rounds - mismatches,
              "reference_results": len(reference),
              "reference_out_of_scope_not_shown": not_shown,
              "browsers_nice": args.nice,
              "browser_autogroups_niced": niced_groups,
              "browsers": "fresh" if args.fresh_browsers else "returning (page scripts cached)",
              "load_average_at_start": load_at_start,
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    if not args.no_cli:
        cli = cli_cpu_per_image(files, args.sessions, args.cli_repeats)
        result.update(cli)
        result["server_over_cli_cpu_per_image"] = round(
            result["server_cpu_per_image_all_ms"] / cli["cli_cpu_per_image_ms"], 2)
        result["server_over_cli_how"] = ("median server CPU per image (rounds) over median CLI "
                                         "CPU per image (repeats); the range is min/max and "
                                         "max/min of the two")
        result["server_over_cli_range"] = [
            round(min(per_image) / cli["cli_cpu_per_image_spread_ms"][1], 2),
            round(max(per_image) / cli["cli_cpu_per_image_spread_ms"][0], 2)]
        result["cpu_targets"] = ("server_cpu_per_image_all_ms <= 45 and "
                                 "server_over_cli_cpu_per_image <= 1.3")
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if mismatches == 0 and len(reference) + not_shown == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
