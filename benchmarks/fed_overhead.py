"""Federation overhead: federated vs centralised wall time, server cost per round, memory vs client count.

    python benchmarks/fed_overhead.py ratio   --clients 10 --rounds 3 --local-epochs 1
    python benchmarks/fed_overhead.py server  --clients 10 --model dnet --preset paper
    python benchmarks/fed_overhead.py memory  --clients 10 100 --per-round 10

* ``ratio``: ``fed_digits_datashare`` (FedAvg, its pathological k=2 partition) with every client sampled every round, R rounds x E
  local epochs, against centralised training of the same module on the union of the clients' training
  samples for R x E epochs. Reported: clients' training time / centralised fit time (the ideal is 1.0;
  the excess is one Trainer per client and round plus weight transfer) and the whole federation (with
  per-round evaluation and checkpoints) / centralised.
* ``server``: what the server does each round besides waiting for clients, for K updates of a model of
  the given size (``--preset paper``: the 27.6M-parameter D-Net): no-data check, FedAvg aggregation and
  the atomic ``server.pt`` checkpoint, in ms (mean of ``--repeats``), plus one evaluation pass of the
  global model over ``--eval-images`` images.
* ``memory``: peak RSS of one round with ``--per-round`` clients sampled out of each count in
  ``--clients`` (fresh subprocess each): the client store keeps state on disk, so it should not grow.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # timing.py, also when this file is loaded by path

from timing import in_fresh_process  # noqa: E402


def _compose(overrides: list[str], out: Path):
    from tests.hydra_helpers import compose_run

    return compose_run(["logger=csv", "federation.progress=false", *overrides], out)


def _digits(clients: int, per_round: int, rounds: int, epochs: int) -> list[str]:
    return ["+exp=fed_digits_datashare", "federation/strategy=fedavg",
            f"federation.num_clients={clients}",
            f"federation.clients_per_round={per_round}", f"federation.rounds={rounds}",
            f"federation.local_epochs={epochs}", "federation.min_clients=1"]


def ratio(args: argparse.Namespace) -> dict:
    import numpy as np

    from federation.runner import train_local
    from federation.loop import run_federation
    from datamodules.subset import SubsetDataModule

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(_digits(args.clients, args.clients, args.rounds, args.local_epochs), Path(tmp))
        t0 = time.perf_counter()
        metrics = run_federation(cfg)
        fed_total = time.perf_counter() - t0
        rows = [json.loads(json.dumps(r)) for r in _rounds(Path(tmp) / "run" / "rounds.csv")]
        clients_s = sum(float(r["seconds_clients"]) for r in rows)
        from federation.server import Server

        server = Server(cfg)  # same partition (seeded): the union of the clients' training indices
        train = np.sort(np.concatenate([server.indices[c].train for c in server.client_ids]))
        dm = SubsetDataModule(server.base, train, None, seed=server.seed)
        t0 = time.perf_counter()
        train_local(server.ccfg, dm, None, args.rounds * args.local_epochs, server.seed)
        central = time.perf_counter() - t0
    return {"clients": args.clients, "rounds": args.rounds, "local_epochs": args.local_epochs,
            "train_samples": int(len(train)), "centralised_s": central, "fed_clients_s": clients_s,
            "fed_total_s": fed_total, "ratio_clients": clients_s / central, "ratio_total": fed_total / central,
            "fed_test_acc": metrics.get("test/acc"), "device": "cpu"}


def _rounds(path: Path) -> list[dict]:
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def server(args: argparse.Namespace) -> dict:
    import torch

    from federation.core.messages import ClientUpdate, assert_no_data, state_schema
    from federation.server_state import save_atomic
    from federation.core.strategies import FedAvg
    from lightning_modules.nets import build_model, count_parameters

    torch.manual_seed(0)
    kw = {"in_channels": 1, "classes": 2}
    if args.model not in ("unet", "unetpp"):
        kw.update(preset=args.preset, width=args.width)
    net = build_model(args.model, **kw).eval()
    glob = {k: v.detach().clone() for k, v in net.state_dict().items()}
    schema = state_schema(glob)
    updates = [ClientUpdate(str(i), {k: v + 0.01 * i if v.is_floating_point() else v for k, v in glob.items()},
                            100 + i, {"dice": 0.5}) for i in range(args.clients)]
    strategy = FedAvg()
    times = {"no_data_check_ms": [], "aggregate_ms": [], "checkpoint_ms": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for u in updates:
                assert_no_data(u, schema)
            t1 = time.perf_counter()
            new = strategy.aggregate(glob, updates, 0)
            t2 = time.perf_counter()
            save_atomic({"round": 0, "global": new}, Path(tmp) / "server.pt")
            t3 = time.perf_counter()
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(1000 * v)
    x = torch.randn(args.eval_batch, 1, args.size, args.size)
    with torch.no_grad():
        net(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(max(1, args.eval_images // args.eval_batch)):
            net(x)
        eval_ms = 1000 * (time.perf_counter() - t0)
    out = {k: sum(v) / len(v) for k, v in times.items()}
    out.update({"model": args.model, "params_M": count_parameters(net) / 1e6, "clients": args.clients,
                "eval_ms": eval_ms, "eval_images": max(1, args.eval_images // args.eval_batch) * args.eval_batch,
                "size": args.size, "device": "cpu"})
    return out


def _one_round_peak(clients: int, per_round: int) -> dict:
    from federation.loop import run_federation

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(_digits(clients, per_round, 1, 1) + ["federation.eval_clients=sampled"], Path(tmp))
        t0 = time.perf_counter()
        run_federation(cfg)
        return {"clients": clients, "per_round": per_round, "seconds": time.perf_counter() - t0,
                "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory(args: argparse.Namespace) -> list[dict]:
    return [in_fresh_process(__file__, ["_peak", n, args.per_round], f"memory run with {n} clients")
            for n in args.clients_list]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_peak":
        print(json.dumps(_one_round_peak(int(sys.argv[2]), int(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("ratio")
    r.add_argument("--clients", type=int, default=10)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--local-epochs", type=int, default=1)
    s = sub.add_parser("server")
    s.add_argument("--clients", type=int, default=10)
    s.add_argument("--model", default="dnet")
    s.add_argument("--preset", default="paper")
    s.add_argument("--width", type=int, default=None)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--eval-images", type=int, default=16)
    s.add_argument("--eval-batch", type=int, default=8)
    m = sub.add_parser("memory")
    m.add_argument("--clients", dest="clients_list", type=int, nargs="+", default=[10, 100])
    m.add_argument("--per-round", type=int, default=10)
    args = p.parse_args()
    result = {"ratio": ratio, "server": server, "memory": memory}[args.what](args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
