"""Name -> constructor registry for segmentation networks.

Every constructor follows the segmentation-models-pytorch keyword convention (``in_channels``,
``classes``) and returns an ``nn.Module`` whose ``forward(x)`` yields logits ``[B, classes, H, W]``
(see ``docs/architecture.md``, section *Networks*).

Own nets register themselves with :func:`register_model` when ``lightning_modules.nets`` is imported:
importing this module imports the package first, and the package imports its flat net modules by name
and every sub-package ``lightning_modules/nets/<name>/`` automatically, so the registry is complete.
Nets outside ``lightning_modules.nets`` register only once their own module is imported.  The smp
entries below never download weights unless the caller passes ``encoder_weights`` explicitly.

smp models require ``H`` and ``W`` divisible by the encoder's output stride (32 for ResNets) and
raise smp's own ``RuntimeError`` naming the size otherwise; the nets implemented here pad instead.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Callable, Iterable, TypeVar

import torch.nn as nn

from lightning_modules.errors import one_line

__all__ = ["register_model", "build_model", "list_models", "get_model_class", "count_parameters",
           "import_subpackages"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Class/function decorator adding a constructor under ``name`` (case-insensitive)."""

    key = name.lower()

    def deco(fn: F) -> F:
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[key]!r}")
        _REGISTRY[key] = fn
        return fn

    return deco


def import_subpackages(package: str, path: Iterable[str]) -> list[str]:
    """Import every sub-package (a folder with ``__init__.py``) of ``package`` found on ``path`` (the
    package's ``__path__``), so that the nets they define run their :func:`register_model`; returns their
    names. Flat modules are left alone. An import error is not swallowed: a broken net folder fails loudly."""
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)) if info.ispkg)
    for name in names:
        try:
            importlib.import_module(f"{package}.{name}")
        except Exception as err:  # a walkthrough: a copied net folder (a second register_model of one name) failed
            where = os.path.join(*package.split("."), name)  # every model= choice as "DNet does not resolve"
            raise ImportError(f"net folder {where}/ does not import: {one_line(err)}") from err
    return names


def list_models() -> list[str]:
    """Sorted list of registered model names."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> Callable[..., nn.Module]:
    """Constructor registered under ``name``; ``ValueError`` listing valid names if unknown."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[key]


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered under ``name`` with ``kwargs`` (e.g. ``in_channels``, ``classes``)."""
    return get_model_class(name)(**kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (optionally only trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- smp entries
def _smp():
    import segmentation_models_pytorch as smp  # local import keeps `import registry` cheap

    return smp


@register_model("unet")
def smp_unet(in_channels: int = 3, classes: int = 1, encoder_name: str = "resnet34",
             encoder_weights: str | None = None, **kwargs) -> nn.Module:
    """``smp.Unet`` (Ronneberger et al. 2015 with a ResNet encoder); no pretrained weights by default."""
    return _smp().Unet(encoder_name=encoder_name, encoder_weights=encoder_weights,
                       in_channels=in_channels, classes=classes, **kwargs)


@register_model("unetpp")
def smp_unetpp(in_channels: int = 3, classes: int = 1, encoder_name: str = "resnet34",
               encoder_weights: str | None = None, **kwargs) -> nn.Module:
    """``smp.UnetPlusPlus`` (Zhou et al. 2018 with a ResNet encoder); no pretrained weights by default."""
    return _smp().UnetPlusPlus(encoder_name=encoder_name, encoder_weights=encoder_weights,
                               in_channels=in_channels, classes=classes, **kwargs)


@register_model("resnet18_unet")
def smp_resnet18_unet(in_channels: int = 3, classes: int = 1, encoder_weights: str | None = None,
                      **kwargs) -> nn.Module:
    """``smp.Unet`` with a ResNet-18 encoder (~14.3M parameters); no pretrained weights by default."""
    return smp_unet(in_channels=in_channels, classes=classes, encoder_name="resnet18",
                    encoder_weights=encoder_weights, **kwargs)
