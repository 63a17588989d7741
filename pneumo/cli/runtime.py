"""``python -m pneumo.runtime``: build (or check) the cached fast-runtime model ahead of time."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pneumo import config
from pneumo.models.runtime import RUNTIMES, load_explainer


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumo.runtime``: build (or check) the cached runtime model now, e.g. while
    deploying, so that the server's first start does not convert it."""
    import argparse
    import time

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
    explainer.explain(np.zeros((1, config.IMAGE_SIZE, config.IMAGE_SIZE, config.CHANNELS)))
    where = getattr(explainer, "folder", "(Keras: nothing to build)")
    print(f"{explainer.runtime} runtime ready in {time.perf_counter() - start:.1f} s: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
