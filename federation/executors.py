"""Old import path of the executors, now :mod:`federation.transports` (kept for code written against it)."""
from federation.transports import ClientJob, ExecutorError, check_update  # noqa: F401
from federation.transports.inprocess import SequentialExecutor  # noqa: F401
from federation.transports.ray import RayExecutor  # noqa: F401

__all__ = ["ClientJob", "ExecutorError", "check_update", "SequentialExecutor", "RayExecutor"]
