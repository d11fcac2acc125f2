"""What the Flower executor's privacy options and values may be, checked before any process starts, and the
one line that says what the server sees of a site's update.

``federation.privacy``: ``none``, ``dp`` (Flower's client-side ``LocalDpMod``: clipping and Gaussian noise) or
``secagg`` (Flower's ``SecAggPlusWorkflow``), a Flower-executor option only. Moved out of :mod:`.launch`,
which starts and stops the processes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from federation.transports import executor_kind
from lightning_modules.kinds import is_number

__all__ = ["PRIVACY", "check_flower_privacy", "check_secagg", "privacy_line", "check_dp_statistics", "dp_problem",
           "check_dp_metrics"]

PRIVACY = ("none", "dp", "secagg")


def _number(key: str, value: Any, low: float, low_ok: bool = False, high: float | None = None,
            allow_none: bool = False) -> None:
    """``value`` a number above ``low`` (``low_ok``: at least) and below ``high``, else one ``ConfigError``."""
    from engine.errors import ConfigError

    if value is None and allow_none:
        return
    ok = is_number(value, allow_inf=True) and (value >= low if low_ok else value > low) and (
        high is None or value < high)
    if not ok:
        bound = f"{'>=' if low_ok else '>'} {low:g}" if high is None else f"in ({low:g}, {high:g})"
        raise ConfigError(f"{key}={value}: must be a number {bound}" + (" or null" if allow_none else ""))


def dp_problem(dp: Mapping[str, float]) -> str | None:
    """Why ``LocalDpMod``'s Gaussian mechanism with these values is not (epsilon, delta)-DP for one release of a
    site's clipped update, or None. Its noise scale ``sensitivity * sqrt(2 ln(1.25/delta)) / epsilon`` holds only
    when ``sensitivity`` bounds how far the released update can move between neighbouring datasets: a site sends
    an update either way, and two updates clipped to L2 norm ``clipping_norm`` C lie up to 2C apart (Dwork & Roth
    2014, Def. 3.8, replace-one adjacency), so at least 2C. A first review found sensitivity=0 accepted (no
    noise); a paper review found the C this check then asked for gave about 2 epsilon, not epsilon."""
    clip, sens, eps, delta = (float(dp[k]) for k in ("clipping_norm", "sensitivity", "epsilon", "delta"))
    if not clip > 0:
        return f"clipping_norm={clip:g} must be > 0"
    if not sens >= 2 * clip:
        return (f"sensitivity={sens:g} is below 2 x clipping_norm={2 * clip:g}: two updates clipped to norm "
                f"{clip:g} lie up to {2 * clip:g} apart, and the noise must cover that (sensitivity >= 2 x clipping_norm)")
    if not eps > 0 or not 0 < delta < 1:
        return f"epsilon={eps:g} must be > 0 and delta={delta:g} in (0, 1)"
    return None


def check_flower_privacy(fed: Any) -> None:
    """``federation.privacy`` and the Flower executor's values, refused in one line (``ConfigError``) before any
    process starts: a walkthrough found privacy=secagg/dp/bogus ignored without a word off the Flower executor,
    and timeout_s=-5 or dp.epsilon=-1 failing only on the nodes, after every process had started."""
    from engine.errors import ConfigError

    privacy = fed.get("privacy", "none")
    privacy = "none" if privacy is None else str(privacy)
    if privacy not in PRIVACY:
        raise ConfigError(f"federation.privacy={privacy}: expected none, dp or secagg")
    if executor_kind(fed) != "flower":
        if privacy != "none":
            target = str(OmegaConf.select(fed, "executor._target_", default="") or "")
            name = target.rsplit(".", 1)[-1] or "SequentialExecutor"
            raise ConfigError(f"federation.privacy={privacy}: privacy is a Flower-executor option (Flower's "
                              f"LocalDpMod / SecAgg+), and this federation runs on {name}; add "
                              f"federation/executor=flower or set federation.privacy=none")
        return
    ex = fed.executor
    given = "none" if ex.get("privacy") is None else str(ex.get("privacy"))
    if given != privacy:  # a walkthrough: executor.privacy=dpp started every process, then a cut-off traceback line
        raise ConfigError(f"federation.executor.privacy={given} differs from federation.privacy={privacy}: "
                          f"set federation.privacy (none, dp or secagg), which the executor follows")
    for key in ("launch", "stream", "node_auth"):  # a walkthrough: launch=maybe (and launch=no) started a rehearsal
        if ex.get(key) is not None and not isinstance(ex.get(key), bool):
            raise ConfigError(f"federation.executor.{key}={ex.get(key)}: must be true or false")
    _number("federation.executor.timeout_s", ex.get("timeout_s"), 0, allow_none=True)
    _number("federation.executor.connect_timeout_s", ex.get("connect_timeout_s", 180.0), 0)
    if privacy == "dp":
        dp = ex.get("dp") or {}
        unknown = sorted(set(map(str, dp)) - {"clipping_norm", "sensitivity", "epsilon", "delta", "release_metrics"})
        if unknown:
            raise ConfigError(f"federation.executor.dp.{unknown[0]} is no LocalDpMod setting (clipping_norm, "
                              "sensitivity, epsilon, delta) nor release_metrics")
        for key in ("clipping_norm", "sensitivity", "epsilon", "delta"):
            if dp.get(key) is None:
                raise ConfigError(f"federation.executor.dp.{key} is missing (federation.privacy=dp needs it)")
        _number("federation.executor.dp.clipping_norm", dp.get("clipping_norm"), 0)
        _number("federation.executor.dp.sensitivity", dp.get("sensitivity"), 0, low_ok=True)
        _number("federation.executor.dp.epsilon", dp.get("epsilon"), 0)
        _number("federation.executor.dp.delta", dp.get("delta"), 0, high=1)
        problem = dp_problem(dp)
        if problem is not None:
            raise ConfigError(f"federation.executor.dp: {problem}")
        if float(dp["epsilon"]) >= 1:  # said, not refused: Flower's LocalDpMod takes any epsilon
            import logging

            logging.getLogger(__name__).warning(
                "federation.executor.dp.epsilon=%g: the Gaussian mechanism's noise scale sqrt(2 ln(1.25/delta)) / "
                "epsilon is proven for epsilon < 1 (Dwork & Roth, Thm 3.22); above it the stated guarantee is not "
                "established", float(dp["epsilon"]))
        check_dp_metrics(fed)
    if privacy == "secagg":
        _check_secagg_round(fed)


def check_dp_metrics(fed: Any) -> None:
    """``dp.release_metrics`` a boolean, and a strategy that needs the sites' validation metrics refused under DP
    without it: data sharing's ``mode=part`` allocates by each site's accuracy, which DP withholds (one line,
    before any process starts, rather than a round that trained and then could not allocate)."""
    from engine.errors import ConfigError
    from federation.core.strategies import DataSharing, strategy_class

    given = OmegaConf.select(fed, "executor.dp.release_metrics", default=False)
    if not isinstance(given, bool):
        raise ConfigError(f"federation.executor.dp.release_metrics={given!r}: must be true or false")
    strategy = fed.get("strategy") or {}
    try:
        cls = strategy_class(str(strategy.get("_target_", "")))
    except ValueError:
        return  # the strategy's own check names it
    if not given and issubclass(cls, DataSharing) and str(strategy.get("mode", "part")) == "part":
        raise ConfigError("federation.privacy=dp withholds the sites' validation metrics (LocalDpMod noises only the "
                          "weights), and data sharing's mode=part allocates by each site's accuracy; set "
                          "federation.executor.dp.release_metrics=true (they then leave in clear, outside epsilon) "
                          "or federation.strategy.mode=none|all")


def check_dp_statistics(fed: Any, state: Mapping[str, Any], is_local: Callable[[str], bool]) -> None:
    """Under ``privacy=dp`` no BatchNorm running statistic of ``state`` may leave the sites (``is_local``: the
    strategy's): ``LocalDpMod`` clips a site's whole update as one vector, and the statistics' change outweighs
    the weights' (``python -m benchmarks.dp_bn_share``: L2 42.5 against 0.13 after 10 SGD steps of an smp U-Net,
    so clipping to norm 1 scales the weights' update by 0.024 and noise does the rest); sent in clear beside the clipped arrays they
    would leak the sites' data statistics DP is meant to hide. One ``ConfigError`` line naming the way out."""
    from engine.errors import ConfigError

    if str(fed.get("privacy", "none") or "none") != "dp":
        return
    stats = [k for k in state if k.endswith(("running_mean", "running_var")) and not is_local(k)]
    if stats:
        raise ConfigError(f"federation.privacy=dp: the net's BatchNorm running statistics ({len(stats)} entries, "
                          f"e.g. {stats[0]}) would be clipped with the weights in each site's update and use up "
                          f"the clipping norm; keep them at the sites (federation/strategy=fedbn, or the "
                          f"strategy's local_keys / local_prefixes) or use a net without BatchNorm (small_cnn: "
                          f"model.norm=group)")


def _check_secagg_round(fed: Any) -> None:
    """SecAgg+'s shares and threshold against the sites of a round, as Flower's ``SecAggPlusWorkflow`` sets
    them up (a walkthrough: reconstruction_threshold=5 with 3 sites a round was not refused; the workflow
    would halt every round with "Insufficient available nodes")."""
    from engine.errors import ConfigError
    from federation.core.sampling import clients_per_round
    from federation.transports.flower.secagg import SecAggSettings

    raw = fed.executor.get("secagg")
    try:
        wf = SecAggSettings.from_config(OmegaConf.to_container(raw, resolve=True) if raw is not None else None
                                        ).workflow(None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"federation.executor.secagg: {exc}") from None
    n = fed.get("num_clients")
    if n is None:  # sites named by the partition: their number is known only once the data is
        return
    k = clients_per_round(int(n), fed.get("clients_per_round"))
    if k < 2:
        return  # check_secagg names clients_per_round
    if isinstance(wf.num_shares, float):  # SecAggPlusWorkflow.setup_stage
        shares = round(wf.num_shares * k)
        shares += 1 if shares < k and shares % 2 == 0 else 0
        shares = k if shares <= 2 else shares
    else:
        shares = wf.num_shares
    if isinstance(wf.reconstruction_threshold, float):
        threshold = max(round(wf.reconstruction_threshold * shares), 2)
    else:
        threshold = wf.reconstruction_threshold
    shares += 1 if k != shares and shares % 2 == 0 else 0
    neighbours = min(2 * (shares >> 1) + 1, k)  # each site's key shares go to itself and its neighbours
    if threshold > neighbours:
        given = OmegaConf.select(fed, "executor.secagg.reconstruction_threshold")
        raise ConfigError(f"federation.executor.secagg.reconstruction_threshold={given}: SecAgg+ would need "
                          f"{threshold} key shares to unmask a site, but a round of {k} sites "
                          f"(federation.clients_per_round) gives each site only {neighbours}; lower it (an int "
                          f"<= {neighbours}, or a fraction of num_shares)")


def privacy_line(cfg: DictConfig) -> str:
    """One line saying what the server sees of a site's update (a deployment walkthrough found a DP rehearsal
    silent about DP being on): the plain update, a clipped and noised one, or only the sum."""
    privacy = str(OmegaConf.select(cfg, "federation.privacy", default="none"))
    if privacy == "dp":
        dp = OmegaConf.select(cfg, "federation.executor.dp", default={}) or {}
        rounds = OmegaConf.select(cfg, "federation.rounds", default=None)
        metrics = ("its validation metrics are sent in clear, outside epsilon and delta (dp.release_metrics=true)"
                   if dp.get("release_metrics") is True else
                   "its validation metrics are withheld (dp.release_metrics=true sends them, in clear)")
        return (f"privacy=dp: each site clips its update to L2 norm {dp.get('clipping_norm')} and adds Gaussian "
                f"noise before sending it (Flower's LocalDpMod, epsilon={dp.get('epsilon')}, "
                f"delta={dp.get('delta')} per round, sensitivity={dp.get('sensitivity')}; a site taking part in "
                f"all {rounds} rounds releases {rounds} such updates, which compose: up to {rounds} x epsilon by "
                f"basic composition); its sample count and step counter are sent exact, and {metrics}")
    if privacy == "secagg":
        return "privacy=secagg: the server learns only the sites' weighted sum of updates (Flower's SecAgg+)"
    return "privacy=none: the server sees each site's update as it is (federation.privacy=dp|secagg to change)"


def check_secagg(cfg: DictConfig) -> None:
    """What SecAgg+ cannot do, refused in one line (``ConfigError``) before any process starts."""
    from engine.errors import ConfigError
    from federation.core.sampling import clients_per_round
    from federation.core.strategies import strategy_class
    from federation.transports.flower.secagg import SecAggSettings

    target = str(OmegaConf.select(cfg, "federation.strategy._target_", default=""))
    strategy = target.rsplit(".", 1)[-1]
    try:
        averages = strategy_class(target).averages
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not averages:
        raise ConfigError(f"federation.strategy={strategy}: SecAgg+ (federation.privacy=secagg) shows the server "
                          f"only the sites' weighted mean, and {strategy} does not aggregate by a mean "
                          "(Strategy.averages is False); use a mean-based strategy (FedAvg, FedProx, FedBN, FedOpt)")
    if OmegaConf.select(cfg, "federation.strategy.weighted", default=True) is False:
        raise ConfigError(f"federation.strategy.weighted=false ({strategy}): SecAgg+ (federation.privacy=secagg) "
                          "always weights a site by its sample count; use weighted=true")
    n = OmegaConf.select(cfg, "federation.num_clients")
    if n is not None and clients_per_round(int(n), OmegaConf.select(cfg, "federation.clients_per_round")) < 2:
        raise ConfigError("federation.clients_per_round: SecAgg+ (federation.privacy=secagg) needs at least 2 "
                          "sites per round (a sum of one update is that update)")
    try:
        SecAggSettings.from_config(OmegaConf.to_container(cfg.federation.executor.get("secagg"), resolve=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"federation.executor.secagg: {exc}") from None
