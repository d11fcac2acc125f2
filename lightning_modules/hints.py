""""Did you mean" for a mistyped config key: the close names of what the config or the class has.

A walkthrough typed ``data.imag_size=32``: Hydra answered that the key is not in the struct and advised
``+data.imag_size=32``, which then failed as an unexpected constructor argument; neither line named
``image_size``. Both lines now end with the close matches (:mod:`difflib`).
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Iterable

from hydra.utils import get_object

__all__ = ["did_you_mean", "argument_hint", "struct_key_hint"]


def did_you_mean(word: str, options: Iterable[Any], prefix: str = "") -> str:
    """``" (did you mean <prefix>a or <prefix>b?)"`` for the options close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(prefix + c for c in close)}?)" if close else ""


def argument_hint(target: Any, err: BaseException, prefix: str = "") -> str:
    """The hint for ``TypeError: ... got an unexpected keyword argument 'x'`` raised by ``target``'s constructor:
    the close names among its parameters."""
    m = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if not m:
        return ""
    try:
        params = inspect.signature(get_object(str(target))).parameters
    except Exception:  # noqa: BLE001 - an unresolvable target has no parameters to offer
        return ""
    return did_you_mean(m.group(1), [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)],
                        prefix)


def struct_key_hint(err: BaseException | None) -> str:
    """The hint for OmegaConf's "Key 'x' is not in struct" (an override of a key the config lacks): the close
    keys of the node it was set in, named in full (``data.image_size``)."""
    node, key, full = (getattr(err, a, None) for a in ("parent_node", "key", "full_key"))
    if node is None or not isinstance(key, str) or "not in struct" not in str(err):
        return ""
    try:
        keys = list(node.keys())
    except Exception:  # noqa: BLE001 - a list node or a broken one: no hint
        return ""
    parent = str(full).rsplit(".", 1)[0] + "." if full and "." in str(full) else ""
    return did_you_mean(key, keys, parent)
