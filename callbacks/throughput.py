"""Cost of a run as summary metrics: parameters, forward FLOPs per image, training images/s, peak memory.

Logged as ``perf/*`` to every logger (W&B summary included) and kept in ``callback.summary`` so the run's
``metrics.json`` carries them too. FLOPs come from ``torch.utils.flop_counter`` on one image of the first
training batch (a forward pass; ×3 is the usual estimate for a training step).
"""
from __future__ import annotations

import resource
import time

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Throughput(pl.Callback):
    """Training images/s over the steps' own time (batch start to batch end, not the loading between them). On a
    GPU each step is timed by two CUDA events read once an epoch (a review: a ``torch.cuda.synchronize`` at each
    step's start and end stopped the CPU from queueing ahead of the GPU, for one summary number)."""

    def __init__(self) -> None:
        self.summary: dict[str, float] = {}
        self._images = 0
        self._seconds = 0.0
        self._t0 = 0.0
        self._flops_done = False
        self._events: list[list] = []  # [start, end] CUDA events of the epoch's steps, read at its end

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        image = batch["image"] if isinstance(batch, dict) else batch[0]
        if not self._flops_done:
            self._flops_done = True
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                pl_module(image[:1])
            pl_module.train(was_training)
            self.summary["perf/forward_gflops_per_image"] = counter.get_total_flops() / 1e9
        if image.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append([start, None])
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        image = batch["image"] if isinstance(batch, dict) else batch[0]
        if image.is_cuda and self._events and self._events[-1][1] is None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1][1] = end
        elif not image.is_cuda:
            self._seconds += time.perf_counter() - self._t0
        self._images += len(image) * trainer.world_size

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read_events()

    def _read_events(self) -> None:
        """The epoch's CUDA step times into ``_seconds``: one wait for the last event, not one a step."""
        done = [(s, e) for s, e in self._events if e is not None]
        if done:
            done[-1][1].synchronize()
            self._seconds += sum(s.elapsed_time(e) for s, e in done) / 1000.0
        self._events.clear()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read_events()
        net = getattr(pl_module, "net", pl_module)  # the net that is deployed: a distillation's frozen teacher and its
        self.summary["perf/num_parameters"] = float(sum(p.numel() for p in net.parameters()))  # adapters left out
        self.summary["perf/train_images_per_s"] = self._images / max(self._seconds, 1e-9)
        self.summary["perf/peak_memory_mib"] = peak_memory_mib(pl_module.device)
        for lg in trainer.loggers:
            lg.log_metrics(self.summary, step=trainer.global_step)
