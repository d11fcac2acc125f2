"""One reader for the JSON files a data folder brings (nnU-Net ``dataset.json``, split files): a missing
or malformed file is one :class:`DataError` line naming it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.errors import DataError

__all__ = ["read_json"]


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON at ``path``; ``what`` names the file in the error (e.g. ``data.split_file``)."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} {p} does not exist") from None
    except ValueError as exc:
        raise DataError(f"{what} {p} is not valid JSON ({exc})") from None
