"""Data set loaders: TensorFlow Datasets, scikit-learn digits, local `.npz`,
a folder of class subfolders (`folder.py`).

Every loader returns a `DataSplits` of NumPy arrays (of file paths for a
folder: `ImageFiles`). Images are HWC: uint8 in [0, 255] for photographs
(TFDS, `.npz`, folders), float32 in [0, 1] for digits.
`make_pipeline` turns either into float32 in [0, 1] before augmenting.
"""

import dataclasses
import os
import warnings
import zipfile
import zlib

import numpy as np

from keras_gmix.data.download import check_download_reachable
from keras_gmix.data.folder import load_image_folder
from keras_gmix.data.splits import DataSplits, compute_mean_std
from keras_gmix.data.subset import balanced_subset_indices, check_subset_args, resolve_subset_size

# Per-channel mean and standard deviation of the training pixels, in [0, 1]
# units, pooled over all training images and pixel positions (not the
# average of per-image standard deviations: the often-copied CIFAR-10 std
# (0.2023, 0.1994, 0.2010) is that average and is too small).
# CIFAR-10: computed on the 50,000 training images in Stevens, Antiga and
# Viehmann, "Deep Learning with PyTorch" (Manning 2020), section 7.1.2; the
# partial copy in ../shared/data (5,438 images) gives (0.494, 0.485, 0.448)
# and (0.248, 0.244, 0.262).
# CIFAR-100: the training-set values computed in weiaicunzai/pytorch-cifar100
# (conf/global_settings.py), rounded to 4 digits.
# SVHN and STL-10 have no constant here: `load_dataset` computes their
# statistics from the training split.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclasses.dataclass(frozen=True)
class _TFDSInfo:
    num_classes: int
    input_shape: tuple
    flip: bool  # is a horizontal flip label-preserving?
    mean: tuple = None
    std: tuple = None


# Digits and house numbers are not mirror-symmetric: no flip for SVHN.
TFDS_DATASETS = {
    "cifar10": _TFDSInfo(10, (32, 32, 3), True, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _TFDSInfo(100, (32, 32, 3), True, CIFAR100_MEAN, CIFAR100_STD),
    "svhn_cropped": _TFDSInfo(10, (32, 32, 3), False),
    "stl10": _TFDSInfo(10, (96, 96, 3), True),
}
DATASET_NAMES = tuple(TFDS_DATASETS) + ("digits",)

DIGITS_SPLIT_SEED = 0  # the digits train/test split never changes with `seed`


def _as_numpy(dataset):
    """Concatenates a (image, label) tf.data.Dataset into two arrays."""
    # tfds.load(..., batch_size=-1) would do this in one step, but it
    # crashes under tfds.testing.mock_data (the mock has no split sizes);
    # batching by hand works with both.
    xs, ys = [], []
    for x, y in dataset.batch(4096).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _download_urls(builder):
    """The URLs a TFDS builder downloads, from its registered checksums."""
    try:
        url_infos = builder.url_infos
    except ModuleNotFoundError as error:
        if error.name != "importlib_resources":
            raise
        # Installs made before keras_gmix declared it lack it.
        raise ModuleNotFoundError(
            "tensorflow-datasets needs the package importlib_resources to "
            "download data sets but does not declare it. Install it with "
            "`pip install importlib_resources`, or reinstall keras_gmix "
            "(`pip install -e .`), which declares it.",
            name=error.name,
        ) from error
    return sorted(url_infos or ())


def load_tfds(name, data_dir=None, download=True):
    """Loads a TensorFlow Datasets image classification set as `DataSplits`.

    Args:
        name: one of "cifar10", "cifar100", "svhn_cropped", "stl10".
        data_dir: str or None, where TFDS keeps its data. Defaults to
            TFDS' own default (`~/tensorflow_datasets`).
        download: bool, whether TFDS may download and prepare the data.
            Defaults to True, as in `tfds.load`.

    Returns:
        A `DataSplits` with uint8 images; the "train" and "test" splits
        (STL-10's "unlabelled" split is not loaded).

    Raises:
        DownloadUnavailableError: (a `ConnectionError`) if the data set is
            not prepared in `data_dir` and its download host cannot be
            reached within `DOWNLOAD_CHECK_TIMEOUT` seconds; the message
            names `--data-dir` and `.npz` files.
    """
    if name not in TFDS_DATASETS:
        raise ValueError(
            f"Unknown TFDS data set name={name!r}. Expected one of {sorted(TFDS_DATASETS)}."
        )
    import tensorflow_datasets as tfds

    info = TFDS_DATASETS[name]
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        if not builder.is_prepared():
            # Fail in seconds, with the fix named, rather than after TFDS'
            # minutes of retries.
            check_download_reachable(name, _download_urls(builder))
        builder.download_and_prepare()  # as tfds.load: a no-op if prepared
    train, test = builder.as_dataset(split=["train", "test"], as_supervised=True)
    x_train, y_train = _as_numpy(train)
    x_test, y_test = _as_numpy(test)
    mean, std = info.mean, info.std
    if mean is None:
        mean, std = compute_mean_std(x_train)
    return DataSplits(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=info.num_classes,
        input_shape=tuple(info.input_shape),
        flip=info.flip,
        mean=tuple(mean),
        std=tuple(std),
    )


def load_digits(image_size=None, test_fraction=0.2):
    """Loads scikit-learn's 8x8 digits (1,797 images, 10 classes).

    The images are scaled from [0, 16] to float32 in [0, 1] and split into
    train and test, stratified by class, with a fixed seed
    (`DIGITS_SPLIT_SEED`), so the test split is always the same.

    Args:
        image_size: int or None, side length to resize to with bilinear
            interpolation (e.g. 16 or 32 for convolutional models that
            downsample). Defaults to None (keep 8x8).
        test_fraction: float in (0, 1), the share of the test split.
            Defaults to 0.2 (1,437 train and 360 test images).

    Returns:
        A `DataSplits` with float32 images of shape [n, s, s, 1].
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction!r}"
        )
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    if image_size is not None:
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, (int, np.integer))
            or image_size < 1
        ):
            raise ValueError(
                "`image_size` must be a positive integer or None. "
                f"Received: image_size={image_size!r}"
            )
        import tensorflow as tf

        x = tf.image.resize(x, (image_size, image_size), method="bilinear")
        # Bilinear weights are convex, so this clip only removes rounding.
        x = np.clip(x.numpy(), 0.0, 1.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        y,
        test_size=test_fraction,
        stratify=y,
        random_state=DIGITS_SPLIT_SEED,
    )
    mean, std = compute_mean_std(x_train)
    return DataSplits(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=tuple(x_train.shape[1:]),
        flip=False,
        mean=mean,
        std=std,
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def check_splits(splits, source):
    """Refuses splits that cannot train or test a classifier, whatever their source.

    Each split must hold at least one example, and the training labels at
    least two classes (one class makes the loss and the accuracy trivial,
    and Keras then reports a shape error about the loss instead).

    Args:
        splits: a `DataSplits`.
        source: how the user named the data (a path, a folder), for the message.
    """
    for split, size in (("training", splits.train_size), ("test", splits.test_size)):
        if size == 0:
            raise ValueError(
                f"The {split} split of {source!r} holds no examples: give it at least one "
                "(a folder held out needs two or more images in some class; an .npz file "
                f"needs non-empty x_{'train' if split == 'training' else 'test'})."
            )
    classes = np.unique(splits.y_train)
    if splits.num_classes < 2 or len(classes) < 2:
        raise ValueError(
            f"The training split of {source!r} holds {len(classes)} class(es) "
            f"({classes.tolist()}): a classifier needs examples of at least two classes."
        )


def _check_npz_arrays(path, arrays):
    """The arrays of an .npz data set: examples in both splits, numeric and
    finite pixels of one dtype and one image shape (channels last) for both
    splits."""
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"In {path!r}, {key} has dtype {x.dtype}: images must be uint8 (0 to 255) "
                "or floats (e.g. in [0, 1]). Convert it (np.uint8 for whole pixel values "
                "0 to 255) and save the file again."
            )
        if not len(x):
            raise ValueError(
                f"In {path!r}, {key} holds no examples: both splits need at least one "
                "image. Save the file again with examples in x_train and x_test."
            )
        if np.issubdtype(x.dtype, np.floating) and x.size:
            bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"In {path!r}, {key} holds NaN or inf values in {int(bad.sum())} "
                    f"image(s) (the first at index {int(np.flatnonzero(bad)[0])}): clean or "
                    "drop them (e.g. np.nan_to_num) and save the file again."
                )
    dtypes = [arrays[key].dtype for key in ("x_train", "x_test")]
    if (dtypes[0] == np.uint8) != (dtypes[1] == np.uint8):
        raise ValueError(
            f"In {path!r}, x_train is {dtypes[0]} and x_test {dtypes[1]}: uint8 images are "
            "divided by 255 and float images are taken as they are, so the two splits "
            "would be scaled differently. Save both splits in one dtype."
        )
    height, width, channels = arrays["x_train"].shape[1:]
    if height in (1, 3, 4) and channels not in (1, 3, 4) and width == channels:
        raise ValueError(
            f"In {path!r}, x_train has shape {arrays['x_train'].shape}: its images look "
            "channels first (n, channels, height, width). gmix-train takes them as "
            "(n, height, width, channels): save np.transpose(x, (0, 2, 3, 1)) for both "
            "splits."
        )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"In {path!r}, the test images are {arrays['x_test'].shape[1:]} and the training "
            f"images {arrays['x_train'].shape[1:]}: both splits must hold images of one "
            "shape (H, W, C). Resize one of them and save the file again."
        )


def _npz_class_ids(path, split, y):
    """`(ids, width)`: an .npz split's labels as int64 class ids of shape
    [n], and the width of one-hot rows (None for ids). Accepted: ids of
    shape [n] or [n, 1] (keras.datasets' CIFAR labels), of an integer dtype or
    whole-valued floats, and exact one-hot rows [n, C]."""
    name = f"In {path!r}, y_{split}"
    if y.dtype == np.bool_:  # two classes, as False/True
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(
            f"{name} must hold integer class indices. Received dtype {y.dtype}: map class "
            "names to ids first (and save the names as `label_names`)."
        )
    width = None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] > 1:
        rows = y.astype(np.float64)
        if not (np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=1) == 1)):
            raise ValueError(
                f"{name} has rows of shape {y.shape[1:]} that are not one-hot (one 1 per row, "
                "the rest 0): save class ids of shape [n] (soft labels are made by "
                "the mixing methods themselves)."
            )
        width, y = y.shape[1], rows.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be class ids of shape [n] (or [n, 1], or one-hot rows [n, C]). "
            f"Received shape {y.shape}."
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
        raise ValueError(
            f"{name} must hold whole class ids; it holds fractional, NaN or inf values "
            f"(dtype {y.dtype})."
        )
    return y.astype(np.int64), width


def _check_class_ids_are_dense(path, y_train, y_test, num_classes):
    """Refuses class ids of which most never occur (a stray 999 among 0..2
    would build a model of 1,000 classes, a stray 10**9 one that cannot be
    allocated): the number of classes is read from the largest id."""
    present = np.union1d(np.unique(y_train), np.unique(y_test))
    if num_classes > 2 * len(present):
        raise ValueError(
            f"In {path!r}, the class ids run up to {num_classes - 1} ({num_classes} "
            f"classes), but only {len(present)} of them occur "
            f"({present[:8].tolist()}{' ...' if len(present) > 8 else ''}): a model of "
            f"{num_classes} outputs would be built for them. Number the classes 0 to "
            f"{len(present) - 1} (np.unique(y, return_inverse=True)), or save "
            f"`label_names` naming all {num_classes} classes if the others are meant."
        )


def _warn_of_classes_never_trained(path, y_train, y_test, num_classes):
    """A class with test examples but no training example cannot be learned:
    said (not refused: a subset may lack a class on purpose)."""
    untrained = sorted(set(np.unique(y_test).tolist()) - set(np.unique(y_train).tolist()))
    if untrained:
        warnings.warn(
            f"In {path!r}, y_test holds the classes {untrained}, which y_train never has: "
            f"the model ({num_classes} classes) cannot learn them, and their "
            f"{int(np.isin(y_test, untrained).sum())} test examples count as errors.",
            UserWarning,
            stacklevel=3,
        )


def _read_npz(path):
    """The arrays of `NPZ_KEYS` and `label_names` (or None) of an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise ValueError(
                    f"The .npz file {path!r} lacks the arrays {missing}; it must "
                    f"hold {list(NPZ_KEYS)}. Found: {sorted(f.files)}"
                )
            arrays = {k: f[k] for k in NPZ_KEYS}
            label_names = f["label_names"] if "label_names" in f.files else None
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        # np.load reads a file that is no zip archive as a pickle, refused here.
        raise ValueError(
            f"The .npz file {path!r} holds object (pickled) arrays or is not an .npz "
            "archive at all, and unpickling can run arbitrary code, so it is not loaded. "
            "Save numeric arrays (uint8/float images, integer labels) and string label "
            "names with dtype 'U' with np.savez."
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(
            f"The .npz file {path!r} is unreadable (empty, truncated or not an .npz "
            f"archive: {error or type(error).__name__}). Write it again with np.savez."
        ) from None
    return arrays, label_names


def load_npz(path, num_classes=None, flip=True):
    """Loads arrays x_train, y_train, x_test, y_test from a `.npz` file.

    This is how the partial CIFAR copies in ../shared/data are read. The
    file is opened with `allow_pickle=False`. Grayscale images given as
    [n, H, W] get a channel axis.

    Args:
        path: str, path of the `.npz` file.
        num_classes: int or None. Defaults to the length of a `label_names`
            array in the file if there is one, else the largest label + 1.
        flip: bool, whether a horizontal flip keeps the label. Defaults to
            True (natural images).

    Returns:
        A `DataSplits`; mean and std are computed from x_train.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .npz file: {path!r}")
    arrays, label_names = _read_npz(path)
    one_hot_width = None
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim == 3:
            x = arrays[f"x_{split}"] = x[..., None]
        y, width = _npz_class_ids(path, split, arrays[f"y_{split}"])
        one_hot_width = one_hot_width or width
        arrays[f"y_{split}"] = y
        if x.ndim != 4 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"In {path!r}, x_{split} must be [n, H, W, C] (or [n, H, W]) "
                f"and y_{split} [n] with the same n. Received shapes "
                f"{x.shape} and {y.shape}."
            )
    _check_npz_arrays(path, arrays)
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    if num_classes is None:
        if label_names is not None:
            num_classes = int(label_names.shape[0])
        elif one_hot_width is not None:
            num_classes = one_hot_width
        else:
            num_classes = int(max(y_train.max(), y_test.max())) + 1
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            named = (
                f"; label_names names {num_classes} classes: add the missing names or "
                "fix the labels"
                if label_names is not None
                else ""
            )
            raise ValueError(
                f"In {path!r}, y_{split} has labels outside "
                f"[0, {num_classes}) (from {int(y.min())} to {int(y.max())}); "
                f"num_classes={num_classes}{named}."
            )
    if label_names is None and one_hot_width is None:
        _check_class_ids_are_dense(path, y_train, y_test, num_classes)
    _warn_of_classes_never_trained(path, y_train, y_test, num_classes)
    x_train = arrays["x_train"]
    mean, std = compute_mean_std(x_train)
    return DataSplits(
        name=path,
        x_train=x_train,
        y_train=y_train,
        x_test=arrays["x_test"],
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        flip=bool(flip),
        mean=mean,
        std=std,
        class_names=None if label_names is None else tuple(str(n) for n in label_names),
    )


def _check_option(option, value, default, name, allowed_for):
    if value != default:
        raise ValueError(
            f"`{option}` applies only to {allowed_for}. Received "
            f"{option}={value!r} for name={name!r}."
        )


def load_dataset(
    name,
    data_dir=None,
    train_fraction=None,
    train_size=None,
    seed=0,
    download=True,
    image_size=None,
    num_classes=None,
    flip=None,
    test_dataset=None,
    color_mode="rgb",
):
    """Loads a data set by name, optionally keeping a class-balanced subset.

    Args:
        name: "cifar10", "cifar100", "svhn_cropped", "stl10" (TensorFlow
            Datasets), "digits" (scikit-learn, no download), a path ending
            in ".npz" holding x_train, y_train, x_test, y_test, or a folder
            with one subfolder of images per class (`load_image_folder`).
        data_dir: str or None, TFDS data directory. Defaults to TFDS' default.
        train_fraction: float in (0, 1] or None, the share of the training
            split to keep. Defaults to None (all).
        train_size: int or None, the number of training examples to keep.
            Exclusive with `train_fraction`. Defaults to None (all).
        seed: int, seed of the subset draw: the same seed gives the same
            subset. Defaults to 0.
        download: bool, whether TFDS may download. Defaults to True.
        image_size: int or None, digits and folders: resize images to this
            side. Defaults to None (8x8 digits; a folder's first image's size).
        num_classes: int or None, `.npz` only: the number of classes.
            Defaults to None (inferred).
        flip: bool or None, `.npz` and folders: whether horizontal flips
            keep the label. Defaults to None (True).
        test_dataset: str or None, folders only: a second folder of the same
            classes to test on. Defaults to None (a fixed stratified fifth of
            the folder is held out).
        color_mode: str, folders only: `"rgb"` or `"grayscale"`, the mode
            every image is converted to. Defaults to `"rgb"` (as Keras).

    Returns:
        A `DataSplits`. With a subset, each class keeps as equal a number of
        examples as possible (`balanced_subset_indices`); the test split is
        never subset, and mean/std stay those of the full training split.

    Example:

    >>> splits = load_dataset("digits", train_size=100, seed=1)
    >>> splits.x_train.shape, splits.num_classes
    ((100, 8, 8, 1), 10)
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(
            f"`name` must be one of {list(DATASET_NAMES)}, a path ending "
            f"in '.npz' or a folder. Received: name={name!r}"
        )
    name = os.fspath(name)
    check_subset_args(train_fraction, train_size)  # fail before loading
    # A known name wins over a folder of that name (write ./digits for the folder).
    is_folder = name not in DATASET_NAMES and not name.endswith(".npz") and os.path.isdir(name)
    if not is_folder:
        _check_option("test_dataset", test_dataset, None, name, "folders of class subfolders")
        _check_option("color_mode", color_mode, "rgb", name, "folders of class subfolders")
    if name.endswith(".npz"):
        _check_option("image_size", image_size, None, name, "'digits' and folders")
        splits = load_npz(
            name,
            num_classes=num_classes,
            flip=True if flip is None else flip,
        )
    elif name in TFDS_DATASETS or name == "digits":
        _check_option("num_classes", num_classes, None, name, ".npz files")
        _check_option("flip", flip, None, name, ".npz files and folders")
        if name == "digits":
            splits = load_digits(image_size=image_size)
        else:
            _check_option("image_size", image_size, None, name, "'digits' and folders")
            splits = load_tfds(name, data_dir=data_dir, download=download)
    elif is_folder:
        _check_option("num_classes", num_classes, None, name, ".npz files")
        splits = load_image_folder(
            name,
            image_size=image_size,
            test_directory=test_dataset,
            flip=True if flip is None else flip,
            color_mode=color_mode,
        )
    else:
        raise ValueError(
            f"Unknown data set name={name!r}. Expected one of "
            f"{list(DATASET_NAMES)}, a path ending in '.npz', or an existing "
            "folder with one subfolder of images per class."
        )
    check_splits(splits, name)
    size = resolve_subset_size(
        splits.train_size, train_fraction=train_fraction, train_size=train_size
    )
    if size is None or size == splits.train_size:
        return splits
    present = len(np.unique(splits.y_train))
    if size < present:
        # A class-balanced subset holds one example of each class at least.
        raise ValueError(
            f"A training subset of {size} example(s) of {name!r} cannot hold one example "
            f"of each of its {present} classes: keep at least {present} (train_size, or a "
            "larger train_fraction)."
        )
    idx = balanced_subset_indices(splits.y_train, size, num_classes=splits.num_classes, seed=seed)
    return dataclasses.replace(splits, x_train=splits.x_train[idx], y_train=splits.y_train[idx])
