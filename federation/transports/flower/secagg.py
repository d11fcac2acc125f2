"""``federation.privacy=secagg``: one round of Flower's SecAgg+ (Bell et al. 2020) for the sampled sites.

Flower 1.42 runs SecAgg+ as a *legacy* workflow: ``flwr.server.workflow.SecAggPlusWorkflow`` (server,
four message rounds: setup, share keys, collect masked vectors, unmask) driven by a ``LegacyContext``
that holds a legacy ``flwr.server.strategy.Strategy``, with ``flwr.clientapp.mod.secaggplus_mod`` on each
ClientApp. This module is the adapter between that workflow and our executor:

* :class:`_OneRound`, the legacy strategy, hands the workflow the round's ready-made ``FitIns`` (our wire
  content per site, :mod:`.wire`) and keeps what ``aggregate_fit`` receives: the unmasked, dequantised,
  sample-weighted mean ``sum_k n_k x_k / sum_k n_k`` of the sites' vectors (the workflow divides by the
  summed quantised weights itself) and each site's ``FitRes``, whose ``num_examples`` and ``metrics``
  Flower's SecAgg+ sends *in clear* (only the arrays are masked);
* :func:`run_secagg` runs the workflow once and returns both, or ``None`` when it halted (fewer than 2
  sites, too few left to reconstruct the masks, or any error inside the workflow: a reply that does not add).

Each site sends its floating entries' *delta* ``w_k - w_global`` (small, so the quantisation grid is fine; its
integer entries go in clear, :func:`.wire.secagg_update`); the node
multiplies it by ``n_k / max_weight`` and clips it to ``[-clipping_range, clipping_range]`` before
quantising to ``quantization_range`` levels (``secaggplus_mod._collect_masked_vectors``).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, FitRes, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

__all__ = ["SecAggSettings", "SecAggResult", "run_secagg"]

log = logging.getLogger("federation.transports.flower.secagg")


@dataclass(frozen=True)
class SecAggSettings:
    """``federation.executor.secagg`` (see ``flower.yaml``); the arguments of ``SecAggPlusWorkflow``."""

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.67
    max_weight: float = 1000.0
    clipping_range: float = 8.0
    quantization_range: int = 4194304

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> SecAggSettings:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"federation.executor.secagg: unknown keys {sorted(unknown)}")
        out = cls(**cfg)
        out.workflow(None)  # Flower's own checks of the values (one error naming the key)
        return out

    def workflow(self, timeout: float | None) -> SecAggPlusWorkflow:
        return SecAggPlusWorkflow(self.num_shares, self.reconstruction_threshold, max_weight=float(self.max_weight),
                                  clipping_range=float(self.clipping_range),
                                  quantization_range=int(self.quantization_range), timeout=timeout)


@dataclass
class SecAggResult:
    """The round's weighted mean (arrays in the wire's key order) and each site's clear ``FitRes``."""

    mean: list[np.ndarray]
    replies: dict[int, FitRes]   # node id -> FitRes (num_examples, metrics; parameters = the mean)
    failures: int


class _Proxy(ClientProxy):
    """The workflow only reads ``node_id`` from its proxies; nothing is sent through them."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("messages go through the Grid")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


class _OneRound(LegacyStrategy):
    """A legacy strategy for exactly one ``SecAggPlusWorkflow`` call (see the module docstring)."""

    def __init__(self, fitins: Mapping[int, FitIns]) -> None:
        self.fitins = dict(fitins)
        self.result: tuple[list[tuple[ClientProxy, FitRes]], int] | None = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[ClientProxy, FitIns]]:
        return [(_Proxy(node), ins) for node, ins in self.fitins.items()]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        self.result = (list(results), len(failures))
        return (results[0][1].parameters if results else None), {}

    def initialize_parameters(self, client_manager: Any) -> None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Any) -> None:
        return None


def run_secagg(grid: Any, fitins: Mapping[int, FitIns], round_number: int, settings: SecAggSettings,
               timeout: float | None = None) -> SecAggResult | None:
    """One SecAgg+ round over the nodes of ``fitins`` (node id -> FitIns); ``None`` when it halted."""
    strategy = _OneRound(fitins)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: int(round_number)})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    rng = random.getstate()  # the workflow shuffles the node ids with Python's global generator
    try:
        settings.workflow(timeout)(grid, context)
    except Exception as exc:  # noqa: BLE001 - a security review: one site's masked reply with fewer arrays (or
        # shapes that do not add, bad bytes) raised in Flower's unmasking and stopped the whole federation; now the
        # round halts as when too few sites answer (the executor retries it, then min_clients decides)
        log.warning("round %d: SecAgg+ halted: %s: %s", round_number, type(exc).__name__, str(exc)[:200])
        return None
    finally:
        random.setstate(rng)
    if strategy.result is None or not strategy.result[0]:
        return None
    results, failures = strategy.result
    mean = parameters_to_ndarrays(results[0][1].parameters)
    return SecAggResult(mean, {int(proxy.node_id): res for proxy, res in results}, failures)
