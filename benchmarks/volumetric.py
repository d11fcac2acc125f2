"""Volumetric benchmarks (issue 12): whole predict vs bare MONAI sliding window, 3D patch data time vs
step time, folder predict vs one call per volume.

    python -m benchmarks.volumetric predict  [--shape 256 256 100] [--roi 64] [--phases]  # project / bare MONAI
    python -m benchmarks.volumetric patches  [--steps 5]                       # data time / step time
    python -m benchmarks.volumetric folder   [--n 10]                          # 10 single calls / one folder call
    python -m benchmarks.volumetric probabilities [--shape 256 256 100]        # host peak of save_probabilities

Nets are randomly initialised (speed does not depend on the weights); everything runs on CPU unless
CUDA is present. Print-only: copy figures into docs/benchmarks.md with the command and the machine state.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml

NET = {"_target_": "lightning_modules.nets.monai3d.UNet3D", "in_channels": 1, "classes": 3,
       "features": [8, 8, 16, 32, 64, 8], "spatial_dims": 3}


def _run_dir(tmp: Path, roi: int) -> Path:
    """A checkpoint + run config the way a training run leaves them (3D U-Net, 1 mm, HU window)."""
    from lightning_modules.base import build

    torch.manual_seed(0)
    net = build(dict(NET), what="net")
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": NET, "num_classes": 3, "eval_slices": "all",
                                     "class_names": ["background", "organ", "tumor"], "fg_threshold": None}},
               run / "checkpoints" / "best.ckpt")
    data = {"_target_": "datamodules.patches3d.PatchVolumeDataModule", "root": str(tmp / "unused"),
            "layout": "kits", "window": [-200, 250], "out_range": [-1.0, 1.0], "target": "multiclass",
            "orientation": "RAS", "spacing": [1.0, 1.0, 1.0], "patch_size": [roi] * 3, "synthetic": None}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return run / "checkpoints" / "best.ckpt"


def _volume(path: Path, shape) -> Path:
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(40, 50, shape).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return path


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def bench_predict(shape, roi: int, phases: bool) -> None:
    from monai.inferers import sliding_window_inference
    from omegaconf import OmegaConf

    from experiments.predict import predict
    from lightning_modules.checkpoints import net_from_checkpoint

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt, vol = _run_dir(tmp, roi), _volume(tmp / "ct.nii.gz", shape)
        cfg = OmegaConf.create(dict(ckpt=str(ckpt), input=str(vol), output=str(tmp / "seg.nii.gz"), labels=None,
                                    run_config=None, batch_size=4, roi_size=None, overlap=0.5, mode="gaussian",
                                    tta=False, nsd_tolerance_mm=1.0, device="auto"))
        dev = "cuda" if torch.cuda.is_available() else "cpu"  # where predict's device=auto runs
        net = net_from_checkpoint(ckpt).eval().to(dev)
        x = torch.from_numpy(np.asarray(nib.load(str(vol)).dataobj, np.float32))[None, None].to(dev)
        with torch.no_grad():
            net(x[..., :roi, :roi, :roi].expand(4, -1, -1, -1, -1))  # warm-up at the window batch: CUDA start, cuDNN choice
            _sync(dev)
            t0 = time.perf_counter()
            sliding_window_inference(x, (roi,) * 3, 4, net, overlap=0.5, mode="gaussian")
            _sync(dev)
            bare = time.perf_counter() - t0
        print(f"bare MONAI sliding_window_inference {shape} roi {roi}: {bare:.2f} s", flush=True)
        t0 = time.perf_counter()
        predict(cfg)
        whole = time.perf_counter() - t0
        spent = _phases(predict, cfg) if phases else {}
    print(f"predict {shape} roi {roi}: project predict {whole:.2f} s, bare MONAI sliding_window_inference "
          f"{bare:.2f} s, ratio {whole / bare:.2f}")
    if spent:
        print("where a second predict's time goes (s): " + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()))


PHASES = {"load checkpoints + nets": ("experiments.predict", "load_models"),
          "build data module": ("experiments.predict", "build_datamodule"),
          "read + preprocess": ("datamodules.segmentation", "VolumeSegmentationDataModule.preprocess_volume"),
          "sliding window": ("lightning_modules.inference", "VolumePredictor.probabilities"),
          "back to the input grid + labels": ("datamodules.segmentation", "restore_label_map"),
          "write NIfTI": ("experiments.predict", "save_nifti")}


def _phases(predict, cfg) -> dict[str, float]:
    """Seconds of predict's phases in one more (warm) run: each phase's function wrapped in a timer that waits
    for the GPU before it stops (CUDA work is asynchronous)."""
    import importlib

    total, undo = {label: 0.0 for label in PHASES}, []
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def timed(label, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(dev)
                total[label] += time.perf_counter() - t0
        return run

    for label, (module, name) in PHASES.items():
        owner = importlib.import_module(module)
        *path, attr = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        fn = owner.__dict__[attr] if path else getattr(owner, attr)
        undo.append((owner, attr, fn))
        setattr(owner, attr, timed(label, fn))
    try:
        t0 = time.perf_counter()
        predict(cfg)
        total["whole predict"] = time.perf_counter() - t0
    finally:
        for owner, attr, fn in undo:
            setattr(owner, attr, fn)
    return total


def bench_patches(steps: int) -> None:
    from omegaconf import OmegaConf

    from datamodules.patches3d import PatchVolumeDataModule
    from lightning_modules.nets.monai3d import SegResNetVAE3D

    with tempfile.TemporaryDirectory() as d:
        dm = PatchVolumeDataModule(str(Path(d) / "ph"), layout="kits", window=[-200, 250], out_range=[-1, 1],
                                   target="multiclass", spacing=[1, 1, 1], patch_size=[32, 32, 32],
                                   samples_per_volume=2, batch_size=2,
                                   synthetic=OmegaConf.create({"n_cases": 6, "shape": [96, 96, 32], "seed": 0}))
        dm.prepare_data()
        dm.setup()
        # the net on the GPU where there is one (a performance review: the GPU section's figure was a CPU step)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        net = SegResNetVAE3D(1, 3, (32, 32, 32), init_filters=8).to(device)
        opt = torch.optim.Adam(net.parameters())
        data_t = step_t = 0.0
        it = iter(dm.train_dataloader())
        for i in range(steps + 1):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                it = iter(dm.train_dataloader())
                batch = next(it)
            image, mask = batch["image"].to(device), batch["mask"].to(device)  # the copy counts as data time
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(image), mask) + net.auxiliary_losses()["vae"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i:  # first step warms up (cache fill, allocator)
                data_t, step_t = data_t + t1 - t0, step_t + t2 - t1
    print(f"3D patches 2x2x32^3 of 96x96x32 phantoms, SegResNetVAE on {device.type}: "
          f"data {data_t / steps * 1000:.0f} ms/step, "
          f"train step {step_t / steps * 1000:.0f} ms/step, data share {data_t / (data_t + step_t):.1%}")


def bench_folder(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = _run_dir(tmp, 32)
        (tmp / "in").mkdir()
        for i in range(n):
            _volume(tmp / "in" / f"case{i}_0000.nii.gz", (64, 64, 32))
        base = [sys.executable, "-m", "experiments.predict", f"ckpt={ckpt}", "device=cpu"]
        t0 = time.perf_counter()
        for i in range(n):
            subprocess.run([*base, f"input={tmp / 'in' / f'case{i}_0000.nii.gz'}", f"output={tmp / 'single' / f'c{i}.nii.gz'}"],
                           check=True, capture_output=True)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*base, f"input={tmp / 'in'}", f"output={tmp / 'folder'}"], check=True, capture_output=True)
        folder = time.perf_counter() - t0
    print(f"{n} volumes 64x64x32: {n} single calls {single:.1f} s, one folder call {folder:.1f} s, "
          f"ratio {single / folder:.1f}x")


def bench_probabilities(shape: list[int], classes: int = 3) -> None:
    """Host memory (tracemalloc's peak, numpy's allocations) of mapping one volume's class probabilities back
    to an LPS source grid and writing them to ``.npz``, against the probability volume's own size."""
    import resource
    import tracemalloc

    from datamodules.spatial import to_grid
    from datamodules.volumes import restore_label_map
    from engine.predict import save_probabilities

    affine = np.diag([-0.8, -0.8, 2.5, 1.0])                   # LPS: the way back flips two axes
    _, grid = to_grid(np.zeros(shape, np.float32), affine, "RAS", spacing=None)
    prob = torch.rand(shape[2], classes, shape[0], shape[1])  # [D, K, h, w], normalised in place: no temporaries
    prob /= prob.sum(1, keepdim=True)
    size = prob.numel() * 4
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        _, out = restore_label_map(prob, grid, lambda p: p.argmax(0), with_probabilities=True)
        save_probabilities(out, [f"c{i}" for i in range(classes)], None, Path(tmp) / "case.npz")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(f"{classes} x {' x '.join(map(str, shape))} float32 probabilities ({size / 2**20:.0f} MiB) restored to the "
          f"source grid and saved as .npz: peak RSS grew {rss / 2**20:.0f} MiB ({rss / size:.2f}x), numpy's peak "
          f"(tracemalloc) {peak / 2**20:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["predict", "patches", "folder", "probabilities"])
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 100])
    ap.add_argument("--roi", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--phases", action="store_true", help="predict once more, timing each phase")
    a = ap.parse_args()
    {"predict": lambda: bench_predict(a.shape, a.roi, a.phases), "patches": lambda: bench_patches(a.steps),
     "folder": lambda: bench_folder(a.n), "probabilities": lambda: bench_probabilities(a.shape)}[a.what]()


if __name__ == "__main__":
    main()
