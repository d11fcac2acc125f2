"""Old import path of :mod:`federation.core.messages` (kept so code written against it keeps working)."""
from federation.core.messages import *  # noqa: F401,F403
from federation.core.messages import __all__  # noqa: F401
