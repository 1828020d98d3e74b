"""Chapter 0: 3D medical volumes and data.

Finding and loading BraTS subjects (NIfTI), BraTS regions, synthetic phantoms, an HDF5
store for fast patch reads, cropping, normalisation and augmentation. Imports only NumPy,
SciPy, nibabel and h5py: never PyTorch or TensorFlow (their loaders live in
:mod:`mednets.torch.data` and :mod:`mednets.keras.data`).
"""

from mednets.data.brats import REGION_NAMES, brats_regions, label_convention
from mednets.data.phantoms import make_phantom, make_phantom_dataset

__all__ = [
    "REGION_NAMES",
    "brats_regions",
    "label_convention",
    "make_phantom",
    "make_phantom_dataset",
]
