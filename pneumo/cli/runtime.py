"""``python -m pneumo.runtime``: build (or check) the cached fast-runtime models ahead of time:
the classifier, and the lung-field and quality networks when their files are in ``weights/``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.models.runtime import RUNTIMES, load_explainer


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumo.runtime``: build (or check) the cached runtime model now, e.g. while
    deploying, so that the server's first start does not convert it."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pneumo.runtime", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=config.weights_path(config.MODEL_FILE))
    parser.add_argument("--runtime", default=config.RUNTIME,
                        choices=RUNTIMES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        explainer = load_explainer(args.model, args.runtime)
    except (FileNotFoundError, ImportError) as err:
        print(err, file=sys.stderr)
        return 1
    blank = np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS), dtype="uint8")
    explainer.explain(blank)
    where = getattr(explainer, "folder", "(Keras: nothing to build)")
    print(f"{explainer.runtime} runtime ready in {time.perf_counter() - start:.1f} s: {where}")
    if args.model == config.weights_path(config.MODEL_FILE):  # the bundled set: its helpers too
        _build_helpers(blank)
    return 0


def _build_helpers(blank: np.ndarray) -> None:
    """Load (and so convert and cache) the lung-field and quality networks, if present."""
    from pneumo.models.lungs import LungSegmenter
    from pneumo.models.quality import QualityChecker

    for name, load, run in (
            (config.LUNG_MODEL_FILE, LungSegmenter.load, lambda m: m.fields(blank)),
            (config.QUALITY_MODEL_FILE, QualityChecker.load, lambda m: m.check(blank, [(224, 224)]))):
        if not config.weights_path(name).exists():
            continue
        started = time.perf_counter()
        try:
            run(load())
        except Exception as err:  # the app falls back to Keras for it; say so, go on
            print(f"warning: {name} not built ({err})", file=sys.stderr)
            continue
        print(f"{name} ready in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
