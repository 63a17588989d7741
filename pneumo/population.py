"""``python -m pneumo.population``: runs :mod:`pneumo.cli.population`."""

from pneumo.cli.population import main

if __name__ == "__main__":
    raise SystemExit(main())
