"""Chapter 0: 3D medical volumes and data.

Finding and loading BraTS subjects (NIfTI), BraTS regions, synthetic phantoms, an HDF5
store for fast patch reads, cropping, normalisation and augmentation. Imports only NumPy,
SciPy, nibabel and h5py: never PyTorch or TensorFlow (their loaders live in
:mod:`mednets.torch.data` and :mod:`mednets.keras.data`).
"""

from mednets.data.brats import (
    DEFAULT_MODALITIES,
    LABEL_CONVENTIONS,
    MODALITIES,
    REGION_NAMES,
    Subject,
    brats_regions,
    convention_from_naming,
    find_brats_subjects,
    load_subject,
    regions_to_label,
    resolve_label_convention,
    subject_from_dir,
    tumour_classes,
)
from mednets.data.crop import (
    crop_or_pad,
    crop_patch,
    foreground_bbox,
    paste_patch,
    random_crop,
    sample_patch_start,
)
from mednets.data.h5store import H5Volumes, RandomPatches, convert_to_h5
from mednets.data.nifti import load_nifti, orientation, save_nifti
from mednets.data.phantoms import make_phantom, make_phantom_dataset
from mednets.data.samples import SampleNotAvailable, sample_brats
from mednets.data.transforms import (
    brain_mask,
    depth_first,
    depth_last,
    flip,
    random_flip_rot90,
    rot90,
    zscore_normalise,
)

__all__ = [
    "DEFAULT_MODALITIES",
    "LABEL_CONVENTIONS",
    "MODALITIES",
    "REGION_NAMES",
    "Subject",
    "brats_regions",
    "convention_from_naming",
    "find_brats_subjects",
    "load_subject",
    "regions_to_label",
    "resolve_label_convention",
    "subject_from_dir",
    "tumour_classes",
    "crop_or_pad",
    "crop_patch",
    "foreground_bbox",
    "paste_patch",
    "random_crop",
    "sample_patch_start",
    "H5Volumes",
    "RandomPatches",
    "convert_to_h5",
    "load_nifti",
    "orientation",
    "save_nifti",
    "make_phantom",
    "make_phantom_dataset",
    "SampleNotAvailable",
    "sample_brats",
    "brain_mask",
    "depth_first",
    "depth_last",
    "flip",
    "random_flip_rot90",
    "rot90",
    "zscore_normalise",
]
