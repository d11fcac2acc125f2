"""How much round 2 of a federation amplifies a small perturbation of round 1's global model (e.g. SecAgg+'s
quantisation error): the max abs difference of the global weights after round 2, in process.

    python benchmarks/round_sensitivity.py --eps 1.5e-5      # 0 must give 0 (the run is deterministic)
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, default=1.5e-5, help="uniform perturbation in [-eps, eps] per entry")
    p.add_argument("overrides", nargs="*", default=["+exp=fed_digits_datashare", "federation.num_clients=4",
                                                    "federation.clients_per_round=4", "federation.local_epochs=1"])
    args = p.parse_args()
    from federation.server import Server
    from tests.hydra_helpers import compose_run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run([*args.overrides, "federation.rounds=2", "federation.progress=false", "logger=csv"], Path(tmp))
        server = Server(cfg)
        server.run_round(0)
        g1, strategy = {k: v.clone() for k, v in server.global_state.items()}, copy.deepcopy(server.strategy)
        server.run_round(1)
        plain = {k: v.clone() for k, v in server.global_state.items()}
        gen = torch.Generator().manual_seed(1)
        server.global_state = {k: v + args.eps * (2 * torch.rand(v.shape, generator=gen) - 1) if v.is_floating_point()
                               else v for k, v in g1.items()}
        server.strategy = strategy
        server.run_round(1)
        diff = max((plain[k].double() - server.global_state[k].double()).abs().max().item() for k in plain)
    print(f"perturbation {args.eps:g} of round 1's global model -> max abs difference after round 2: {diff:.3g}")


if __name__ == "__main__":
    main()
