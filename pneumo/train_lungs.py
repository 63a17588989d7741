"""``python -m pneumo.train_lungs``: runs :mod:`pneumo.cli.train_lungs`."""

from pneumo.cli.train_lungs import main

if __name__ == "__main__":
    raise SystemExit(main())
