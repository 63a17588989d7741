"""``python -m pneumo.ood``: runs :mod:`pneumo.cli.ood`."""

from pneumo.cli.ood import main

if __name__ == "__main__":
    raise SystemExit(main())
