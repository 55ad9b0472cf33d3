"""Data sets and input pipelines for the recipes.

`load_dataset` returns a `DataSplits` of NumPy arrays (TFDS CIFAR-10/100,
SVHN, STL-10; scikit-learn digits; local `.npz` files; a folder of class
subfolders, held as file paths, `ImageFiles`), optionally reduced to a
class-balanced training subset; `make_pipeline` / `make_pipelines` build
the tf.data input with the standard or a stronger augmentation (image
files are read as they stream)."""

from keras_gmix.data.augment import apply_crop_flip, draw_crop_flip, random_crop_flip
from keras_gmix.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASET_NAMES,
    load_dataset,
    load_digits,
    load_npz,
    load_tfds,
)
from keras_gmix.data.download import DownloadUnavailableError
from keras_gmix.data.fingerprint import data_fingerprint, fingerprint_changes, recorded_path
from keras_gmix.data.folder import COLOR_MODES, MAX_IMAGE_SIZE, ImageFiles, load_image_folder
from keras_gmix.data.pipeline import AUGMENTATIONS, make_pipeline, make_pipelines
from keras_gmix.data.splits import DataSplits, compute_mean_std
from keras_gmix.data.subset import balanced_subset_indices

__all__ = [
    "AUGMENTATIONS",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "COLOR_MODES",
    "DATASET_NAMES",
    "DataSplits",
    "DownloadUnavailableError",
    "ImageFiles",
    "MAX_IMAGE_SIZE",
    "apply_crop_flip",
    "balanced_subset_indices",
    "compute_mean_std",
    "data_fingerprint",
    "draw_crop_flip",
    "fingerprint_changes",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "load_tfds",
    "make_pipeline",
    "make_pipelines",
    "random_crop_flip",
    "recorded_path",
]
