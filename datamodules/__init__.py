"""Data: datamodules for CT volumes and slices, 3D patches, MedMNIST, folders of 2D images, and federated splits.

Importing the package turns off albumentations' update check, a request to pypi.org at every import (a second
audit saw it from every ``experiments.run`` and ``experiments.predict``; a hospital host may not want that
call): ``NO_ALBUMENTATIONS_UPDATE=0`` in the environment keeps it on.
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
