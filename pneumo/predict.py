"""``python -m pneumo.predict``: runs :mod:`pneumo.cli.predict`."""

from pneumo.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
