"""The project's in-process federation against a plain PyTorch loop doing the same training (issue 11 §5).

    python benchmarks/fed_vs_plain.py --repeats 2          # paired whole-process runs, prints the ratio
    python benchmarks/fed_vs_plain.py plain                # one plain run (what the pair times)

Job: scikit-learn digits, SmallCNN width 16, 10 IID clients (each with its 20 % validation split carved
off, as the project does), 5 rounds x 2 local epochs, batch 16, SGD lr 0.1 momentum 0.9, FedAvg weighted
by samples, test accuracy of the final global model. The plain loop uses only torch, scikit-learn and the
Lightning-free ``federation.core`` (partition, seeds); the project run is ``python -m experiments.run
+exp=fed_digits_datashare`` with the same settings (``logger=csv``). Each side is a fresh process, so
start-up import time counts. Figures go in docs/benchmarks.md with the command.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS, ROUNDS, EPOCHS, BATCH, LR, WIDTH, SEED = 10, 5, 2, 16, 0.1, 16, 42
PROJECT = ["+exp=fed_digits_datashare", "federation/strategy=fedavg", "federation/partition=iid", "logger=csv",
           f"federation.num_clients={CLIENTS}", f"federation.clients_per_round={CLIENTS}", f"federation.rounds={ROUNDS}",
           f"federation.local_epochs={EPOCHS}", f"data.batch_size={BATCH}", f"module.optimizer.lr={LR}",
           f"model.width={WIDTH}", f"seed={SEED}", "federation.progress=false", "trainer.deterministic=false"]


def plain() -> float:
    """The same federation as a plain loop; returns the final global test accuracy."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    sys.path.insert(0, str(ROOT))
    from federation.core.partition import iid
    from federation.core.sampling import client_seed

    spec = importlib.util.spec_from_file_location("classifiers", ROOT / "lightning_modules/nets/classifiers.py")
    classifiers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(classifiers)
    torch.manual_seed(SEED)
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, stratify=digits.target, random_state=SEED)
    train, _ = train_test_split(rest, test_size=0.1 / 0.8, stratify=digits.target[rest], random_state=SEED)
    clients = []
    for cid, part in enumerate(iid(np.sort(train), CLIENTS, SEED)):
        perm = np.random.default_rng(client_seed(SEED, -1, str(cid), "val")).permutation(part)
        clients.append(np.sort(perm[max(1, round(0.2 * len(part))):]))
    net = classifiers.SmallCNN(in_channels=1, num_classes=10, width=WIDTH)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for rnd in range(ROUNDS):
        new, sizes = [], []
        for cid, ind in enumerate(clients):
            net.load_state_dict(state)
            net.train()
            opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
            gen = torch.Generator().manual_seed(client_seed(SEED, rnd, str(cid)))
            for _ in range(EPOCHS):
                order = torch.from_numpy(ind)[torch.randperm(len(ind), generator=gen)]
                for b in range(0, len(order), BATCH):
                    batch = order[b:b + BATCH]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                    opt.step()
            new.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            sizes.append(len(ind))
        w = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
        state = {k: (sum(wi * s[k].double() for wi, s in zip(w, new))).to(state[k].dtype) for k in state}
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        acc = float((net(x[test]).argmax(1) == y[test]).float().mean())
    print(f"plain: test/acc={acc:.4f}")
    return acc


def _timed(cmd: list[str], tmp: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pair(repeats: int, extra: list[str]) -> None:
    import tempfile

    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t_plain = _timed([sys.executable, str(Path(__file__).resolve()), "plain"], tmp)
            t_proj = _timed([sys.executable, "-m", "experiments.run", *PROJECT, *extra, f"paths.root_dir={tmp}",
                             f"hydra.run.dir={tmp}/run"], tmp)
            print(f"pair {i + 1}: plain {t_plain:.1f} s, project {t_proj:.1f} s, ratio {t_proj / t_plain:.2f}x"
                  + (f"  ({' '.join(extra)})" if extra else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="pair", choices=["pair", "plain"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("overrides", nargs="*", help="extra overrides for the project run")
    a = p.parse_args()
    if a.mode == "plain":
        plain()
    else:
        pair(a.repeats, a.overrides)


if __name__ == "__main__":
    main()
