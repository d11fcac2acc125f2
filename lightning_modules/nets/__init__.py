"""Segmentation networks (contract: ``docs/architecture.md``, section *Networks*).

Importing the package registers every net in :mod:`.registry`:
``unet3plus`` (:class:`UNet3Plus`), ``dnet`` (:class:`DNet`), ``attention_unet`` (:class:`AttentionUNet`),
``nested_unet`` (:class:`NestedUNet`), ``resnet18_student`` (:class:`ResNet18Student`) and the smp
entries ``unet``, ``unetpp``, ``resnet18_unet``.
"""
from .registry import build_model, count_parameters, get_model_class, list_models, register_model
from .unet3plus import UNet3Plus
from .dnet import DNet
from .attention_unet import AttentionUNet
from .nested_unet import NestedUNet
from .student import ResNet18Student

__all__ = [
    "build_model", "count_parameters", "get_model_class", "list_models", "register_model",
    "UNet3Plus", "DNet", "AttentionUNet", "NestedUNet", "ResNet18Student",
]
