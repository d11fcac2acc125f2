"""Old import path of :mod:`federation.core.partition` (kept so code written against it keeps working)."""
from federation.core.partition import *  # noqa: F401,F403
from federation.core.partition import __all__  # noqa: F401
