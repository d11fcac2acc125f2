"""Local rehearsal of a deployment: ``federation/executor=flower`` (with ``launch: true``).

Starts, as separate OS processes on 127.0.0.1: a SuperLink with TLS (a throw-away CA and certificate in
``<run dir>/flower/certs``) and one SuperNode per client whose node config names its site
(``partition="derive"``: it recomputes its own share of the dataset); with ``node_auth: true`` the
SuperLink admits only SuperNodes whose public key was registered (``--enable-supernode-auth``; a P-384 key
pair per node in ``<run dir>/flower/keys``, registered by ``flwr supernode register`` as an operator
would, docs/deployment.md) and keeps its state in a SQLite file (``--database flower/superlink.db``, as the
deployment's SuperLink does; fresh per launch); then ``flwr run`` submits the
project's Flower App, whose ServerApp runs the usual round loop and writes the usual outputs into the run
dir. Every process is started in its own process group and the whole group is stopped on success,
failure, Ctrl-C and SIGTERM (``try/finally`` + a SIGTERM handler); their pgids are in
``flower/pgids.json`` and their logs in ``flower/logs/``. A launcher killed outright (SIGKILL) takes them
with it (:mod:`~federation.transports.flower.processes`: PDEATHSIG and a watchdog); and a launch or resume
into a run folder still served by processes of an earlier launch (``FLWR_HOME`` of this run in their
environment) stops them first, or refuses in one line while the launcher that owns them is alive
(``flower/launcher.json``), so two ServerApps never write into one folder.
"""
from __future__ import annotations

import logging

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine import artifacts
from federation.errors import FederationError
from federation.transports.flower.commands import (flower_bin, flwr_home, register_nodes, rehearsal_env,
                                                   rehearsal_node_config, superlink_argv, supernode_argv)
from federation.transports.flower.launcher_record import claim
from federation.transports.flower.privacy import (PRIVACY, check_dp_statistics, check_flower_privacy, check_secagg,
                                                   privacy_line)
from federation.transports.flower.processes import HOST, ExitWatch, ProcessGroups, free_port, listening

__all__ = ["rehearse", "ProcessGroups", "free_port", "check_flower_privacy", "PRIVACY"]


APP_DIR = Path(__file__).parent / "app"


def _client_ids(cfg: DictConfig) -> list[str]:
    from federation.plan import names_its_clients

    n = OmegaConf.select(cfg, "federation.num_clients")
    if n is not None and not names_its_clients(cfg.federation.partition):  # a review: a by_site (by_group)
        return [str(i) for i in range(int(n))]  # federation with num_clients set started nodes "0", "1", "2"
    from federation.runner import get_base_datamodule
    from federation.transports.flower.partition import derive_indices

    return list(derive_indices(cfg, get_base_datamodule(cfg.data)))


def _raise_terminate(signum: int, frame: Any) -> None:
    """SIGTERM during the rehearsal: Lightning's ``SIGTERMException``, which ``experiments.run`` turns into the
    line that continues the run (exit 143); the ``finally`` below stops every process group first."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    raise SIGTERMException()


def write_run_config(cfg: DictConfig, fdir: Path) -> Path:
    """The resolved experiment config the ServerApp reads (``cfg-path``), with an absolute output dir; each W&B
    logger in it carries the run's name, tags, facts and job type, which only this Hydra command knows
    (:func:`engine.wandb_tracking.carried_identity`)."""
    from engine.wandb_tracking import with_identity

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["paths"]["output_dir"] = str(Path(cfg.paths.output_dir).resolve())
    for key, lg in (cfg.get("logger") or {}).items():
        if isinstance(lg, DictConfig) and str(lg.get("_target_", "")).endswith("WandbLogger"):
            ident = OmegaConf.to_container(with_identity(cfg, lg))  # a resumed run keeps its first identity
            ident.pop("_convert_", None)
            plain["logger"][key] = ident
    path = fdir / "config.yaml"
    artifacts.atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(plain)))
    return path


def check(cfg: DictConfig) -> None:
    """Refuse, before any process starts, what the ServerApp would refuse (one line, ``ConfigError``)."""
    from federation.plan import check_federation_config
    from federation.transports.flower.server_app import check_data_transfer

    check_federation_config(cfg.federation)  # the Server runs it only inside the ServerApp, after every start
    if str(OmegaConf.select(cfg, "federation.privacy", default="none")) == "secagg":
        check_secagg(cfg)
    if str(OmegaConf.select(cfg, "federation.privacy", default="none")) == "dp":  # as the ServerApp would
        from engine.builders import build_module
        from federation.runner import build_strategy, model_named

        net = build_module(cfg).net
        strategy = build_strategy(cfg.federation.strategy, net, model_named(cfg, net))
        check_dp_statistics(cfg.federation, net.state_dict(), strategy.is_local)
    check_data_transfer(cfg)


def _check_server_data(cfg: DictConfig) -> None:
    """The server's own data folder (``data.root``; phantoms are written where missing) exists on this host, where
    the ServerApp will read it (a walkthrough: a mistyped root was written to the config, exit 0, and surfaced
    only after ``flwr run``)."""
    root = OmegaConf.select(cfg, "data.root", default=None)
    if OmegaConf.select(cfg, "data.sites", default=None) is not None:  # each site's datamodule reads (or writes) its own
        return
    if root is not None and OmegaConf.select(cfg, "data.synthetic", default=None) is None and not Path(root).exists():
        from datamodules.errors import missing_root

        raise missing_root(root)


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """``launch: false``: write the run config and the app for a real SuperLink; print the command."""
    check(cfg)
    _check_server_data(cfg)
    artifacts.console.print(f"[bold]flower:[/bold] {privacy_line(cfg)}")
    fdir = Path(cfg.paths.output_dir).resolve() / "flower"
    fdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(APP_DIR, fdir / "app", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    path = write_run_config(cfg, fdir)
    command = f"flwr run {fdir / 'app'} <superlink connection> --stream --run-config 'cfg-path=\"{path}\"'"
    # one unwrapped line, so it pastes as one command (rich wrapped it at the console's width); in run.log too
    artifacts.console.print("[bold]flower:[/bold] config written; submit the run to your SuperLink with")
    artifacts.console.print(f"  {command}", soft_wrap=True, markup=False, highlight=False)
    logging.getLogger("federation.flower").info("config written; submit the run to your SuperLink with: %s", command)
    return {"flower/config": str(path)}


def rehearse(cfg: DictConfig) -> dict[str, Any]:
    """Run the federation of ``cfg`` as a local Flower deployment; returns the run's metrics."""
    if not cfg.federation.executor.get("launch", True):
        return prepare(cfg)
    from federation.transports.flower.tls import node_keys, throwaway_tls  # cryptography: the flower extra

    from federation.plan import is_remote_sites

    check(cfg)
    artifacts.console.print(f"[bold]flower:[/bold] {privacy_line(cfg)}")
    if is_remote_sites(OmegaConf.select(cfg, "federation.partition")):
        from engine.errors import ConfigError

        raise ConfigError("federation/partition=remote_sites names real sites whose data is on their own hosts; "
                          "the local rehearsal needs a partition of local data (set federation.executor.launch=false "
                          "for a real deployment, docs/deployment.md)")
    out = Path(cfg.paths.output_dir).resolve()
    fdir = out / "flower"
    logs = fdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    home, port = fdir / "home", free_port()
    marker = claim(fdir, home)  # before anything in the folder is rewritten
    (fdir / "result.json").unlink(missing_ok=True)
    app = fdir / "app"
    shutil.copytree(APP_DIR, app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    cfg_path = write_run_config(cfg, fdir)
    ids = _client_ids(cfg)  # builds the data (a wrong data.root stops here): before any private key is made
    store = out / str(OmegaConf.select(cfg, "federation.store_dir", default="client_store"))
    env = rehearsal_env(home, marker)
    ex = cfg.federation.executor
    privacy = str(OmegaConf.select(cfg, "federation.privacy", default="none"))
    groups = ProcessGroups(fdir / "pgids.json", marker=marker)
    previous = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, _raise_terminate)
    interrupted = False
    auth = bool(ex.get("node_auth", False))
    tls: dict = {}
    keys: dict = {}
    try:  # the private keys are made inside it, so the finally deletes them whatever stops the launch (a review)
        tls = throwaway_tls(fdir / "certs")
        flwr_home(home, port, tls["ca"])
        keys = node_keys(fdir / "keys", [f"supernode_{cid}" for cid in ids]) if auth else {}
        database = None
        if auth:  # the deployment's SuperLink (docs/deployment.md): node authentication and a file-backed state,
            database = fdir / "superlink.db"  # fresh per launch (the federation's own state is server.pt)
            for stale in (database, *database.parent.glob(database.name + "-*")):
                stale.unlink(missing_ok=True)
        superlink = groups.start("superlink", superlink_argv(tls, port, auth, database), env, logs / "superlink.log")
        if not listening(superlink, port):
            why = "within 120 s" if superlink.poll() is None else f"(it exited with code {superlink.returncode})"
            raise FederationError(f"the SuperLink did not listen on {HOST}:{port} {why}; see {logs / 'superlink.log'}")
        register_nodes({name: pub for name, (_, pub) in keys.items()}, env, superlink)
        for cid in ids:
            node_cfg = rehearsal_node_config(cid, store, privacy, ex.get("dp"))
            key = keys[f"supernode_{cid}"][0] if auth else None
            groups.start(f"supernode_{cid}", supernode_argv(tls, port, node_cfg, key), env,
                         logs / f"supernode_{cid}.log")
        artifacts.console.print(f"[bold]flower:[/bold] SuperLink https://{HOST}:{port} (TLS, throw-away CA "
                                f"{tls['ca']}{', node authentication: keys in ' + str(fdir / 'keys') if auth else ''})"
                                f" + {len(ids)} SuperNodes; logs in {logs}")
        run = groups.start("flwr_run", [flower_bin("flwr"), "run", str(app), "rehearsal", "--stream",
                                        "--run-config", f'cfg-path="{cfg_path}"'], env, logs / "flwr_run.log",
                           stdout=subprocess.PIPE)
        watch = ExitWatch(groups, run, logs, on_drop=_dropped)
        watch.start()
        try:
            _follow(run, logs / "flwr_run.log", bool(ex.get("stream", True)))
        finally:
            watch.stop()
        if watch.failure:
            raise FederationError(watch.failure)
        _check_result(fdir / "result.json", run.returncode, logs)
        return json.loads((out / "metrics.json").read_text())
    except KeyboardInterrupt:  # Ctrl-C: every group is stopped (finally), then the line that continues the run
        interrupted = True
    finally:
        if main_thread:  # a second Ctrl-C must not cut the stop short (a traceback and live SuperNodes)
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            groups.stop()
        finally:
            # the throw-away private keys go with the processes that used them (a review: left in the run folder)
            for private in ([tls["key"]] if "key" in tls else []) + [k for k, _ in keys.values()]:
                private.unlink(missing_ok=True)
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
                signal.signal(signal.SIGINT, previous_int)
    if interrupted:
        interrupted_exit(cfg)


def _follow(run: subprocess.Popen, log: Path, stream: bool) -> None:
    """Copy ``flwr run``'s output into ``log`` (and to the console with ``stream``) until it exits."""
    with open(log, "a", encoding="utf-8") as log_fh:
        for raw in iter(run.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            log_fh.write(line)
            if stream:
                sys.stdout.write(line)
                sys.stdout.flush()
    run.wait()


def _check_result(result_path: Path, code: int | None, logs: Path) -> None:
    """The ServerApp's ``result.json`` says it finished; else one :class:`FederationError` saying why and where."""
    if not result_path.is_file():
        raise FederationError(f"the Flower run ended (flwr run exit {code}) without a result; see {logs}")
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError) as err:
        raise FederationError(f"the Flower run's {result_path} is unreadable ({type(err).__name__}); see "
                              f"{logs}") from None
    if not isinstance(result, dict) or not result.get("ok"):
        error = result.get("error") if isinstance(result, dict) else f"not a JSON object: {str(result)[:80]}"
        raise FederationError(f"ServerApp failed: {error} (traceback in {result_path})")


def _dropped(site: str, code: int) -> None:
    how = f"was stopped (signal {-code})" if code < 0 else f"exited (code {code})"  # Flower exits 0 on SIGTERM
    artifacts.console.print(f"[bold]flower:[/bold] the SuperNode of site {site} {how}; its site is dropped from "
                            "the rounds")


def interrupted_exit(cfg: DictConfig) -> None:
    """Ctrl-C during the rehearsal ends as SIGTERM does (``experiments.run``): one line with the command that
    continues the run, exit 130 (a walkthrough: SIGINT printed a 35-line KeyboardInterrupt traceback)."""
    from engine.fit import output_dir
    from engine.continue_command import interrupted_line, saved_overrides

    run = output_dir(cfg)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under Hydra (a test, a notebook): the run's saved overrides
        overrides = saved_overrides(Path(run))
    print(interrupted_line("SIGINT", overrides, run), file=sys.stderr, flush=True)
    raise SystemExit(128 + signal.SIGINT)
