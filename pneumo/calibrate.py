"""``python -m pneumo.calibrate``: runs :mod:`pneumo.cli.calibrate`."""

from pneumo.cli.calibrate import main

if __name__ == "__main__":
    raise SystemExit(main())
