"""``python -m pneumo.train``: runs :mod:`pneumo.cli.train`."""

from pneumo.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
