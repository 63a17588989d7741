"""``python -m pneumo.pacs``: runs :mod:`pneumo.cli.pacs`."""

from pneumo.cli.pacs import main

if __name__ == "__main__":
    raise SystemExit(main())
