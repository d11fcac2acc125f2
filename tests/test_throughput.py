"""callbacks/throughput.py: training images/s over the steps' own time; on a GPU without a sync at every step."""
from types import SimpleNamespace

import pytest
import torch

from callbacks.throughput import Throughput


class _FakeEvent:
    """A CUDA event on a fake clock: ``record`` stamps it, ``elapsed_time`` is milliseconds between stamps."""
    clock = [0.0]
    waits = [0]

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at = None

    def record(self) -> None:
        self.at = self.clock[0]

    def synchronize(self) -> None:
        self.waits[0] += 1

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return (end.at - self.at) * 1000.0


class _CudaImage:
    is_cuda = True

    def __len__(self) -> int:
        return 4


def _steps(cb, image, trainer, seconds_per_step):
    for i in range(3):
        cb.on_train_batch_start(trainer, None, {"image": image}, i)
        _FakeEvent.clock[0] += seconds_per_step
        cb.on_train_batch_end(trainer, None, None, {"image": image}, i)
        _FakeEvent.clock[0] += 10.0  # loading the next batch: not the step's time
    cb.on_train_epoch_end(trainer, None)


def test_gpu_steps_are_timed_by_events_read_once_an_epoch(monkeypatch):
    """A review: ``torch.cuda.synchronize`` at each step's start and end kept the CPU from queueing ahead."""
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("a sync per step"))
    _FakeEvent.clock[0], _FakeEvent.waits[0] = 0.0, 0
    cb, trainer = Throughput(), SimpleNamespace(world_size=2, loggers=[], global_step=6)
    cb._flops_done = True
    for _ in range(2):  # two epochs
        _steps(cb, _CudaImage(), trainer, 0.5)
    assert _FakeEvent.waits[0] == 2 and cb._images == 2 * 3 * 4 * 2
    assert cb._seconds == pytest.approx(3.0)  # six steps of 0.5 s; the loading between them left out
    module = SimpleNamespace(parameters=lambda: [torch.zeros(3)], device=torch.device("cpu"))
    cb.on_train_end(trainer, module)
    assert cb.summary["perf/train_images_per_s"] == pytest.approx(48 / 3.0)


def test_cpu_steps_are_timed_by_the_clock():
    cb, trainer = Throughput(), SimpleNamespace(world_size=1, loggers=[], global_step=3)
    cb._flops_done = True
    image = torch.zeros(2, 1, 4, 4)
    for i in range(3):
        cb.on_train_batch_start(trainer, None, {"image": image}, i)
        cb.on_train_batch_end(trainer, None, None, {"image": image}, i)
    cb.on_train_end(trainer, SimpleNamespace(parameters=lambda: [torch.zeros(3)], device=torch.device("cpu")))
    assert cb._images == 6 and cb._seconds > 0 and cb.summary["perf/num_parameters"] == 3.0


def test_the_parameter_count_is_the_deployed_nets():
    """A walkthrough: a distillation's ``perf/num_parameters`` counted its frozen teacher (and adapters), so HLFD's
    student looked larger than the same student trained without KD."""
    cb, trainer = Throughput(), SimpleNamespace(world_size=1, loggers=[], global_step=0)
    cb._flops_done = True
    student = torch.nn.Linear(2, 1)  # 3 parameters
    module = SimpleNamespace(net=student, parameters=lambda: [*student.parameters(), torch.zeros(100)],
                             device=torch.device("cpu"))
    cb.on_train_end(trainer, module)
    assert cb.summary["perf/num_parameters"] == 3.0
