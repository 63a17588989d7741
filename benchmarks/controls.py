"""Server-side script time of a control change on a 20-card Read page (issue #21's target:
<= 0.5 s on 2 cores).

    python benchmarks/controls.py [--data ../shared/data/chest_xray] [--repeats 3]

The whole app runs in Streamlit's AppTest, in this process, as the server runs it: 20 official
test films (10 NORMAL, 10 PNEUMONIA, read from the data folder, never copied) are uploaded and
read once; then each control of the page (heat-map opacity, heat-map method, lung outline) is
changed and the script run that follows is timed (``time.perf_counter`` around ``AppTest.run``,
which runs the page script to completion: the load test's server clock, with AppTest's own
bookkeeping on top, so the figure errs high). No model runs during the timed reruns: the
readings live in the session. Results go to ``benchmarks/controls_results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pneumo import config

TARGET_S = 0.5
ROOT = Path(__file__).resolve().parent.parent


def films(data: Path, n: int = 20) -> list[tuple[str, bytes, str]]:
    paths = (sorted((data / "test" / "NORMAL").glob("*.jpeg"))[: n // 2]
             + sorted((data / "test" / "PNEUMONIA").glob("*.jpeg"))[: n - n // 2])
    return [(p.name, p.read_bytes(), "image/jpeg") for p in paths]


def timed(at, change) -> float:
    change()
    started = time.perf_counter()
    at.run()
    took = time.perf_counter() - started
    assert not at.exception, at.exception
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=config.SHARED_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("controls_results.json"))
    args = parser.parse_args(argv)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
    at.run()
    uploads = films(args.data)
    started = time.perf_counter()
    at.file_uploader[0].set_value(uploads).run()
    first = time.perf_counter() - started
    links = next((m.value for m in at.markdown if m.value.startswith("**Cards**")), "")
    cards = links.count("](#card-")  # the worklist's line of links: one per card on the page
    assert cards == len(uploads), f"{cards} cards for {len(uploads)} films"
    rows = {}
    for name, change in {
        "opacity": lambda i: at.slider(key="cam_opacity").set_value(0.3 + 0.1 * (i % 2)),
        "heat-map method": lambda i: at.radio(key="cam_method").set_value(
            at.radio(key="cam_method").options[(i + 1) % 2]),
        "lung outline": lambda i: at.toggle(key="lung_outline").set_value(i % 2 == 0),
        "threshold": lambda i: at.session_state.__setitem__("threshold", 0.4 + 0.1 * (i % 2)),
    }.items():
        times = [timed(at, lambda c=change, i=i: c(i)) for i in range(args.repeats)]
        rows[name] = {"median_s": statistics.median(times), "max_s": max(times),
                      "met": statistics.median(times) <= TARGET_S}
        print(f"{name:<16} median {rows[name]['median_s']:.3f} s  max {rows[name]['max_s']:.3f} s"
              f"  (target <= {TARGET_S} s)")
    result = {"films": len(uploads), "cards_seen": cards, "first_run_with_reading_s": first,
              "target_s": TARGET_S, "controls": rows,
              "note": "AppTest.run wall time in-process; readings cached in the session"}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
