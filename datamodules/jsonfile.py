"""One reader for the text and JSON files a data folder brings (nnU-Net ``dataset.json``, split files and
lists): a missing, unbounded or malformed file is one :class:`DataError` line naming it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.errors import DataError

__all__ = ["read_json", "data_file_text", "MAX_JSON_BYTES"]

#: nnU-Net's ``dataset.json`` of the largest MSD task and a split file of 100k cases are a few MB
MAX_JSON_BYTES = 64 * 2**20


def data_file_text(path: str | Path, what: str) -> str:
    """The text of a file a data folder brings: a regular file (a link to one is fine: data folders are often
    linked) of at most :data:`MAX_JSON_BYTES`, else one :class:`DataError` line naming it (a trust review: a
    ``dataset.json`` linked to /dev/zero was read until memory ran out)."""
    p = Path(path)
    try:
        if not p.exists():
            raise DataError(f"{what} {p} does not exist")
        if not p.is_file():
            raise DataError(f"{what} {p} is not a regular file")
        if p.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{what} {p} is {p.stat().st_size:,} bytes, more than such a file of a data folder "
                            f"holds ({MAX_JSON_BYTES:,} bytes at most)")
        return p.read_text()
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{what} {p} cannot be read ({exc.strerror or exc})") from None


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON at ``path``; ``what`` names the file in the error (e.g. ``data.split_file``)."""
    p = Path(path)
    text = data_file_text(p, what)  # missing or unreadable: its own line (a walkthrough: "is not valid JSON")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's parser goes
        raise DataError(f"{what} {p} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
