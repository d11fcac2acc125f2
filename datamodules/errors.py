"""Errors raised for bad input data.

Every problem with the user's data (missing folder, unreadable file, shape mismatch, unexpected label
value, ...) is reported as one :class:`DataError` whose message is a single line naming the file,
config key or value at fault, so a failing run says what to fix rather than showing a stack of
library internals.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message is one line naming the file/key/value at fault."""
