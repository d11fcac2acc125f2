"""The Flower ServerApp: the project's federation (rounds, strategy, evaluation, ``server.pt``,
resume, W&B / rounds.csv / metrics.json) running inside Flower, with :class:`.executor.FlowerExecutor`
as the transport.

``flwr run <app> <superlink> --run-config 'cfg-path="<run dir>/flower/config.yaml"'``: the file is the
experiment's resolved config (written by the launcher, or by hand on a server host), read as data: no
aliases, no interpolations, and only the ``_target_``\ s :func:`federation.received.check_server_target` allows. On the way out
the app writes ``flower/result.json`` (``ok`` or the error) beside it, which the launcher reads.
"""
from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from engine.artifacts import atomic_write_text
from engine.run_files import MAX_RUN_FILE_BYTES, load_yaml_data
from federation.received import check_server_target
from federation.transports.flower.executor import set_grid
from lightning_modules.targets import check_targets

__all__ = ["app", "check_data_transfer", "load_run_config"]

log = logging.getLogger("federation.transports.flower.server_app")
app = ServerApp()


def check_data_transfer(cfg) -> str | None:
    """Paper 000's data sharing sends server-held samples to clients. Under a deployment that runs only
    with ``federation.strategy.allow_data_transfer=true``; returns the warning to print loudly (None when
    no data moves). Raises ``ConfigError`` when it would move data without permission."""
    from engine.errors import ConfigError

    from federation.core.strategies import strategy_class

    target = str(OmegaConf.select(cfg, "federation.strategy._target_", default=""))
    frac = float(OmegaConf.select(cfg, "federation.shared_fraction", default=0.0) or 0.0)
    if frac <= 0 or not target:
        return None
    try:
        moves_data = strategy_class(target).moves_data
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not moves_data:
        return None
    from federation.plan import is_remote_sites

    if is_remote_sites(OmegaConf.select(cfg, "federation.partition", default=None)):
        raise ConfigError("federation.strategy=datashare with federation.partition=remote_sites: the shared pool "
                          "travels as indices into the server's dataset, which sites on their own data do not hold "
                          "(sending the pool's samples to real sites is not implemented)")
    allowed = bool(OmegaConf.select(cfg, "federation.strategy.allow_data_transfer", default=False))
    rehearsal = bool(OmegaConf.select(cfg, "federation.executor.launch", default=False))
    if not allowed and not rehearsal:
        raise ConfigError("federation.strategy=datashare sends server-held training samples to the sites; "
                          "under a Flower deployment set federation.strategy.allow_data_transfer=true to allow it")
    return ("DATA TRANSFER: the data-sharing strategy (paper 000) has the sites train on samples of the server's "
            "shared pool, sent as indices into the dataset every node must hold (partition=derive; a site on its own "
            "data refuses them)" + ("" if allowed else " (allowed in this local rehearsal, where every node already "
                                   "holds the dataset; a deployment needs federation.strategy.allow_data_transfer=true)"))


class NoEmptyExitLine(logging.Filter):
    """Drops the record Flower's ``flwr_exit`` logs on a successful exit: an INFO with an empty message
    (no exit code, no help text for code 0), which ``flwr run --stream`` showed as a stray coloured
    ``INFO :`` after the run's last line. Exit messages with text (errors) still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.funcName == "flwr_exit" and record.levelno == logging.INFO and not record.getMessage())


def quiet_empty_exit_line() -> None:
    """Install :class:`NoEmptyExitLine` on Flower's logger (once per process: the ServerApp's)."""
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, NoEmptyExitLine) for f in flwr_logger.filters):
        flwr_logger.addFilter(NoEmptyExitLine())


RUN_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's run.log lines


def log_to_run_dir(run_dir: Path) -> None:
    """The ServerApp's INFO lines (per round and client, the round's global scores) into ``<run dir>/run.log``,
    as a run in one process has them from Hydra (a walkthrough: under Flower they went nowhere). Once per
    process; appended, beside what the launcher's own process writes there."""
    path = (Path(run_dir) / "run.log").resolve()
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore"):  # a line per HTTP request to the SuperLink would bury the rounds' lines
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_run_config(path_text: str):
    """The experiment config named by ``cfg-path``, or one ``ConfigError`` naming it (a walkthrough: a missing
    file gave two chained tracebacks, the second from writing result.json into a folder that did not exist)."""
    from engine.errors import ConfigError

    if not path_text:
        raise ConfigError('cfg-path is empty: pass --run-config \'cfg-path="<run dir>/flower/config.yaml"\' '
                          "(the file experiments.run writes)")
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"cfg-path={path}: no such file (experiments.run ... federation/executor=flower "
                          "federation.executor.launch=false writes it into <run dir>/flower/config.yaml)")
    if path.stat().st_size > MAX_RUN_FILE_BYTES:
        raise ConfigError(f"cfg-path={path}: over {MAX_RUN_FILE_BYTES >> 20} MB, not a run's config")
    try:  # data only, no aliases (a trust review: OmegaConf.load spent minutes on a 358-byte alias bomb)
        cfg = OmegaConf.create(load_yaml_data(path.read_text()))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cfg-path={path}: cannot read it ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - YAML/OmegaConf parse errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cfg-path={path}: not a YAML config ({type(exc).__name__}: {first})") from None
    if not OmegaConf.is_dict(cfg) or OmegaConf.select(cfg, "federation") is None:
        raise ConfigError(f"cfg-path={path}: holds no federation config (federation.* missing)")
    # every _target_ before anything is built, and no interpolation (experiments.run writes it resolved)
    check_targets(cfg, f"cfg-path={path}", check=check_server_target)
    return cfg


def _write_result(result: Path, content: dict) -> None:
    """``result.json`` for the launcher, only where its folder exists (cfg-path may name a folder that does not)."""
    if result.parent.is_dir():
        try:
            atomic_write_text(result, json.dumps(content))  # the launcher never reads half of it
        except OSError as exc:
            log.warning("could not write %s: %s", result, exc)


def _is_user_error(exc: BaseException) -> bool:
    from engine.errors import find_user_error

    return find_user_error(exc) is not None


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run :func:`federation.loop.run_federation` on the config named by ``cfg-path``."""
    quiet_empty_exit_line()
    path_text = str(context.run_config.get("cfg-path", "") or "")
    result = Path(path_text).parent / "result.json"
    try:
        cfg = load_run_config(path_text)
        run_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
        if run_dir:
            log_to_run_dir(Path(str(run_dir)))
        if OmegaConf.select(cfg, "federation.privacy", default="none") == "secagg":
            from federation.transports.flower.privacy import check_secagg

            check_secagg(cfg)
        warning = check_data_transfer(cfg)
        if warning:
            log.warning("!" * 20 + " %s " + "!" * 20, warning)
            print(f"\n{'!' * 78}\n{warning}\n{'!' * 78}\n", flush=True)
        from federation.loop import run_federation

        set_grid(grid)
        try:
            metrics = run_federation(cfg)
        finally:
            set_grid(None)
        _write_result(result, {"ok": True, "rounds": metrics.get("fed/rounds")})
    except BaseException as exc:
        if path_text:
            _write_result(result, {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                   "user_error": _is_user_error(exc),
                                   "traceback": traceback.format_exc()})
        raise
