"""Federated learning for fedmed, in three layers (docs/federation.md, docs/architecture.md):

* :mod:`federation.core`        messages, strategies, data sharing (paper 000 §4.1), partitioners, sampling:
                                no Lightning, Ray or Flower import (importing this package imports only it);
* :mod:`federation.runner`      one client = datamodule for its partition + LightningModule + Trainer, fit,
                                evaluate (the same run wrapper, :func:`engine.fit.fit_and_evaluate`, as a
                                centralised run); :mod:`federation.server` the rounds, aggregation,
                                evaluation and ``server.pt``; :mod:`federation.loop` ``run_federation(cfg)``;
* :mod:`federation.transports`  where clients run: ``inprocess`` (sequential), ``ray``, ``flower``.

The core is re-exported here for convenience.
"""
from .core import *  # noqa: F401,F403
from .core import __all__  # noqa: F401
