"""Old import path of :mod:`federation.core.strategies` (kept so code written against it keeps working)."""
from federation.core.strategies import *  # noqa: F401,F403
from federation.core.strategies import __all__  # noqa: F401
