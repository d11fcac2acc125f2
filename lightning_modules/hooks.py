"""Forward hooks by module path, used to read intermediate features for knowledge distillation.

``FeatureTap(model, ["encoder.layer1", "decoder.blocks.2"])`` registers one forward hook per path
(``model.get_submodule(path)``) and keeps the latest output of each module in ``tap.outputs``
(a dict ``path -> Tensor``), overwritten on every forward (a module called several times in one
forward keeps its last output).  A module returning a list (an smp encoder's stages) may be read at
several indices (``index={path: [2, 3]}``; :meth:`FeatureTap.get`).  Use it as a context manager or call
:meth:`FeatureTap.remove` to drop every handle.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

IndexSpec = int | None | Mapping[str, int | None | Sequence[int | None]]


def indices_by_path(pairs: Iterable[tuple[str, int | None]]) -> dict[str, list[int | None]]:
    """``{path: [index, ...]}`` for a :class:`FeatureTap` from ``(path, index)`` pairs, in their order (a review:
    ``{path: index}`` kept one index a path, so two taps on one encoder's stages 3 and 4 both read stage 4)."""
    out: dict[str, list[int | None]] = {}
    for path, index in pairs:
        if index not in out.setdefault(path, []):
            out[path].append(index)
    return out


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``; an unknown path raises a ValueError listing close matches."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    hint = f"; close matches: {close}" if close else "; no close match"
    raise ValueError(f"module path {path!r} not found in {type(model).__name__}{hint}")


def select_tensor(output: Any, index: int | None = None) -> Tensor:
    """Pick the tensor out of a module output: the tensor itself, ``output[index]`` for a
    tuple/list when ``index`` is given, else its first tensor (first tensor value for a dict)."""
    if isinstance(output, Tensor):
        if index is not None:  # a walkthrough: ignored, so taps at index 0 and 1 of one module read one tensor twice
            raise ValueError(f"index={index} given, but the module returns one Tensor (index picks an element of a "
                             f"tuple/list output)")
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        if index is not None:  # ValueErrors: a tap's config, named at start-up by the dry forward (not a traceback)
            if not -len(output) <= index < len(output):
                raise ValueError(f"index={index} is out of range for a module output of {len(output)} elements")
            chosen = output[index]
            if not isinstance(chosen, Tensor):
                raise ValueError(f"output[{index}] is {type(chosen).__name__}, not a Tensor")
            return chosen
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"cannot find a tensor in module output of type {type(output).__name__}")


class FeatureTap:
    """Capture the outputs of the modules at ``paths`` on every forward of ``model``.

    Args:
        model: the network to tap.
        paths: module paths as in ``model.named_modules()`` (``""`` is the model itself).
        index: which element to keep when a module returns a tuple/list; one int for every path,
            a mapping ``path -> int`` (or a list of ints, each read by :meth:`get`), or ``None`` (default) for
            the first tensor.
        detach: store detached outputs (for a frozen teacher).
    Raises:
        ValueError: at construction, for a path that does not exist (close matches are listed).
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], index: IndexSpec = None,
                 detach: bool = False) -> None:
        self.model = model
        self.paths: list[str] = list(dict.fromkeys(paths))
        self.detach = detach
        self.outputs: dict[str, Tensor] = {}  # each path's first index
        self.selected: dict[tuple[str, int | None], Tensor] = {}  # every (path, index)
        self._handles: list[RemovableHandle] = []
        modules = {path: resolve_module(model, path) for path in self.paths}  # validate all first
        for path, module in modules.items():
            idx = index.get(path) if isinstance(index, Mapping) else index
            wanted = list(dict.fromkeys(idx)) if isinstance(idx, (list, tuple)) else [idx]
            self._handles.append(module.register_forward_hook(self._make_hook(path, wanted or [None])))

    def _make_hook(self, path: str, indices: list[int | None]):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            for index in indices:
                try:
                    tensor = select_tensor(output, index)
                except ValueError as err:
                    raise ValueError(f"module {path!r}: {err}") from None
                self.selected[(path, index)] = tensor.detach() if self.detach else tensor
            self.outputs[path] = self.selected[(path, indices[0])]
        return hook

    def __getitem__(self, path: str) -> Tensor:
        if path not in self.outputs:
            raise KeyError(f"no output captured for {path!r} (was the model run? paths: {self.paths})")
        return self.outputs[path]

    def get(self, path: str, index: int | None) -> Tensor:
        """The output of ``path`` at ``index``, one of the indices it was tapped with."""
        if (path, index) not in self.selected:
            raise KeyError(f"no output captured for {path!r} at index {index} (was the model run? paths: "
                           f"{self.paths})")
        return self.selected[(path, index)]

    def clear(self) -> None:
        """Forget the captured outputs (frees the activations they reference)."""
        self.outputs.clear()
        self.selected.clear()

    def remove(self) -> None:
        """Remove every hook handle; idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTap(paths={self.paths}, active={self.active})"
