"""``python -m pneumo.train_quality``: runs :mod:`pneumo.cli.train_quality`."""

from pneumo.cli.train_quality import main

if __name__ == "__main__":
    raise SystemExit(main())
