"""``python -m pneumo.evaluate``: runs :mod:`pneumo.cli.evaluate`."""

from pneumo.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
