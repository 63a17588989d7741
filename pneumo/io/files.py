"""Image files on disk: find them in a folder, read one within the upload limit."""

from __future__ import annotations

from pathlib import Path

from pneumo.io.base import too_big_to_read
from pneumo.io.images import SUPPORTED_EXTENSIONS


def find_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Files under ``folder`` (recursively) with a supported extension, sorted by path.

    Files under ``exclude`` (e.g. an overlay folder inside ``folder``) are left out.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def read_file(path: Path) -> bytes:
    """The file's bytes; ``OSError`` with a reader-facing message when it can't or shouldn't be read.

    A file above the upload limit is refused from its size, without reading it into memory.
    """
    refusal = too_big_to_read(path.stat().st_size)
    if refusal:
        raise OSError(refusal)
    return path.read_bytes()
