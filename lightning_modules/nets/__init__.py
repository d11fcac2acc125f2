"""Segmentation networks (contract: ``docs/architecture.md``, section *Networks*).

Importing the package registers every net in :mod:`.registry`:
``unet3plus`` (:class:`UNet3Plus`), ``dnet`` (:class:`DNet`), ``attention_unet`` (:class:`AttentionUNet`),
``nested_unet`` (:class:`NestedUNet`), ``resnet18_student`` (:class:`ResNet18Student`), the smp
entries ``unet``, ``unetpp``, ``resnet18_unet``, and whatever each sub-package (a folder
``lightning_modules/nets/<name>/``, see ``docs/extending.md``) registers: every sub-package is imported
here, so a new net folder needs no edit of this file. A sub-package that fails to import fails this import.
"""
from .registry import build_model, count_parameters, get_model_class, import_subpackages, list_models, register_model
from .unet3plus import UNet3Plus
from .dnet import DNet
from .attention_unet import AttentionUNet
from .nested_unet import NestedUNet
from .student import ResNet18Student

__all__ = [
    "build_model", "count_parameters", "get_model_class", "list_models", "register_model",
    "UNet3Plus", "DNet", "AttentionUNet", "NestedUNet", "ResNet18Student",
]

# Sub-packages only: the flat modules above are imported by name, and classifiers.py / monai3d.py
# (classification and 3D nets, outside the registry's 2D contract; monai3d imports MONAI) stay lazy.
import_subpackages(__name__, __path__)
