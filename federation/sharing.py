"""Old import path of :mod:`federation.core.sharing` (kept so code written against it keeps working)."""
from federation.core.sharing import *  # noqa: F401,F403
from federation.core.sharing import __all__  # noqa: F401
