"""Old import path of the client runner, now :mod:`federation.runner` (kept for code written against it)."""
from federation.runner import *  # noqa: F401,F403
from federation.runner import __all__  # noqa: F401
