"""Ray transport: wall time against the sequential transport, and memory from 10 to 100 clients (issue 11 §2, §5).

    python benchmarks/fed_ray.py speed  --clients 4 --rounds 3 --local-epochs 3 --width 64
    python benchmarks/fed_ray.py memory --clients 10 100 --per-round 10 --rounds 5

* ``speed``: the same ``fed_digits_datashare`` job (FedAvg, IID, every client every round, SmallCNN of
  ``--width``) as two whole processes, ``federation/executor=sequential`` and ``federation/executor=ray``
  (2 workers x 1 CPU, a local Ray instance); prints both wall times (start-up and Ray's start included)
  and the ratio ray / sequential. Pick a job where client compute dominates (wider net, more local epochs).
* ``memory``: ``federation/executor=ray`` with ``--per-round`` clients sampled out of each count in
  ``--clients`` for ``--rounds`` rounds, in a fresh process each; a sampler thread sums the resident memory
  of the driver and every process under it (raylet, GCS, the actor pool) every 0.2 s and reports the peak
  and the peak in the last round. The pool is reused across rounds and per-client state lives in the client
  store, so neither should grow with the client count nor the round. Linux only (reads ``/proc``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # timing.py, also when this file is loaded by path

from timing import in_fresh_process  # noqa: E402


def _job(clients: int, per_round: int, rounds: int, epochs: int, width: int) -> list[str]:
    return ["+exp=fed_digits_datashare", "federation/strategy=fedavg", "federation/partition=iid", "logger=csv",
            f"federation.num_clients={clients}", f"federation.clients_per_round={per_round}",
            f"federation.rounds={rounds}", f"federation.local_epochs={epochs}", f"model.width={width}",
            "federation.min_clients=1", "federation.progress=false", "federation.eval_clients=none",
            "trainer.deterministic=false", "seed=42"]


def _run(overrides: list[str], out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *overrides, f"hydra.run.dir={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(overrides[-3:])}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def speed(args: argparse.Namespace) -> dict:
    job = _job(args.clients, args.clients, args.rounds, args.local_epochs, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        seq = _run([*job, "federation/executor=sequential"], Path(tmp) / "seq")
        ray = _run([*job, "federation/executor=ray", "federation.executor.num_workers=2",
                    "federation.executor.cpus_per_client=1", "federation.executor.gpus_per_client=0"], Path(tmp) / "ray")
        acc = {k: json.loads((Path(tmp) / k / "metrics.json").read_text()).get("test/acc") for k in ("seq", "ray")}
    return {"clients": args.clients, "rounds": args.rounds, "local_epochs": args.local_epochs, "width": args.width,
            "sequential_s": round(seq, 1), "ray_s": round(ray, 1), "ratio": round(ray / seq, 3),
            "test_acc_sequential": acc["seq"], "test_acc_ray": acc["ray"]}


def _tree_rss_mib(root: int) -> float:
    """Resident memory (MiB) of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as fh:
                rss[int(d)] = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_child(clients: int, per_round: int, rounds: int) -> dict:
    from hydra.utils import instantiate

    from federation.loop import run_federation
    from tests.hydra_helpers import compose_run

    peaks: list[float] = []
    state = {"peak": 0.0, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            state["peak"] = max(state["peak"], _tree_rss_mib(os.getpid()))
            time.sleep(0.2)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([*_job(clients, per_round, rounds, 1, 16), "federation/executor=ray",
                           "federation.executor.gpus_per_client=0"], Path(tmp))
        executor = instantiate(cfg.federation.executor)
        inner_map = executor.map

        def map_and_note_peak(*a, **kw):  # the peak of each round's client phase, then reset
            out = inner_map(*a, **kw)
            peaks.append(state["peak"])
            state["peak"] = 0.0
            return out

        executor.map = map_and_note_peak
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        run_federation(cfg, executor)
        state["stop"] = True
        thread.join()
    return {"clients": clients, "per_round": per_round, "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
            "peak_MiB": round(max(peaks)), "round_peaks_MiB": [round(p) for p in peaks]}


def memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.clients_list:
        rows.append(in_fresh_process(__file__, ["_peak", n, args.per_round, args.rounds], f"memory run with {n} clients"))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_peak":
        print(json.dumps(_peak_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--clients", type=int, default=4)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--local-epochs", type=int, default=3)
    s.add_argument("--width", type=int, default=64)
    m = sub.add_parser("memory")
    m.add_argument("--clients", dest="clients_list", type=int, nargs="+", default=[10, 100])
    m.add_argument("--per-round", type=int, default=10)
    m.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    out = speed(args) if args.cmd == "speed" else memory(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
