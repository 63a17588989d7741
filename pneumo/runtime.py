"""``python -m pneumo.runtime``: runs :mod:`pneumo.cli.runtime`."""

from pneumo.cli.runtime import main

if __name__ == "__main__":
    raise SystemExit(main())
