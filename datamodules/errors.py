"""Errors raised for bad input data.

Every problem with the user's data (missing folder, unreadable file, shape mismatch, unexpected label
value, ...) is reported as one :class:`DataError` whose message is a single line naming the file,
config key or value at fault, so a failing run says what to fix rather than showing a stack of
library internals.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message is one line naming the file/key/value at fault."""


def missing_root(root: object, what: str = "data.root", expected: str = "") -> DataError:
    """One line for a data folder that is not there; where it is a copy of the shared real sets, how the configs
    find them (a walkthrough: ``+exp=fed_covid_datashare`` without the data said only that the folder did not
    exist, relative to where the command ran)."""
    text = str(root)
    hint = ""
    if "shared/data" in text.replace("\\", "/"):
        hint = ("; the configs read the real sets under $FEDMED_SHARED_DATA, else ../shared/data beside the "
                "repository (its README says where each set comes from): set FEDMED_SHARED_DATA or data.root")
    from pathlib import Path

    if Path(text).exists():  # a walkthrough: data.root=README.md said "does not exist"
        return DataError(f"{what} {root} is not a folder{' (expected ' + expected + ')' if expected else ''}")
    return DataError(f"{what} {root} does not exist{' (expected ' + expected + ')' if expected else ''}{hint}")
