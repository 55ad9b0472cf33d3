"""A user's own images: a folder with one subfolder of images per class.

The layout is the one Keras' `keras.utils.image_dataset_from_directory`
reads (`root/cat/001.png`, `root/dog/xyz.jpg`, ...), and Keras indexes it
here, so the same image formats and the same class order (sorted subfolder
names) apply. The images themselves are not loaded: a split holds their file
paths (`ImageFiles`), and the tf.data pipeline reads and resizes each image
when it streams past, after shuffling, so a folder larger than memory
trains as well as a small one.
"""

import os

import numpy as np

from keras_gmix.data.splits import DataSplits, compute_mean_std

# The held-out test split of a folder without a test folder: a stratified
# fifth, drawn with a fixed seed, so that runs with different `--seed` are
# tested on the same images (as digits' split is).
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# Mean and standard deviation are estimated from this many training images
# (a seeded sample), read once: enough for per-channel constants, and it
# keeps a large folder from being read whole before training.
STATS_SAMPLE = 512


class ImageFiles:
    """A split's images as file paths, read on demand; indexed like an image array.

    Args:
        paths: sequence of image file paths.
        image_shape: `(height, width, channels)` every image is decoded and
            resized to.

    `shape` and `dtype` describe the decoded array ([n, H, W, C], uint8),
    and indexing with a slice or an index array gives the matching
    `ImageFiles`, so subsets and `x[:count]` work as on arrays.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, image_shape):
        self.paths = np.asarray(paths, dtype=str).reshape(-1)
        self.image_shape = tuple(int(d) for d in image_shape)

    @property
    def shape(self):
        return (len(self.paths),) + self.image_shape

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            raise TypeError(
                "Index ImageFiles with a slice or an index array (it stays a set of files)."
            )
        return ImageFiles(self.paths[index], self.image_shape)

    def __repr__(self):
        return f"ImageFiles({len(self)} files, image_shape={self.image_shape})"


# `color_mode` -> channels: every image of a folder is converted to one mode
# (as `keras.utils.image_dataset_from_directory`, rgb by default), whatever
# its own (grayscale, grayscale + alpha, RGB, RGBA, a GIF's palette).
COLOR_MODES = {"rgb": 3, "grayscale": 1}

# The largest side `image_size` may ask for: one 4096 x 4096 RGB image is
# 48 MiB as uint8 and 192 MiB as float32, so a batch of them is already more
# than most machines hold; larger is a typo, refused before anything is read.
MAX_IMAGE_SIZE = 4096


def _to_channels(image, channels):
    """uint8 [H, W, c] of any c in 1..4 as [H, W, channels] (1: luma, 3: RGB)."""
    import tensorflow as tf

    found = tf.shape(image)[-1]
    if channels == 3:
        return tf.cond(
            found >= 3,
            lambda: image[..., :3],
            lambda: tf.image.grayscale_to_rgb(image[..., :1]),
        )

    def luma():
        gray = tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32))
        return tf.cast(tf.round(tf.clip_by_value(gray, 0.0, 255.0)), tf.uint8)

    return tf.cond(found >= 3, luma, lambda: image[..., :1])


def decode_image(path, image_shape):
    """Reads one image file as uint8 [H, W, C], converted to C channels
    (`COLOR_MODES`) and resized (bilinear, as Keras' loader) only when its
    size differs."""
    import tensorflow as tf

    height, width, channels = image_shape
    # channels=0: the file's own; a GIF refuses channels=1 at decoding.
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
    image = _to_channels(image, channels)
    image.set_shape([None, None, channels])
    same_size = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)

    def resized():
        values = tf.image.resize(image, (height, width), method="bilinear")
        return tf.cast(tf.round(tf.clip_by_value(values, 0.0, 255.0)), tf.uint8)

    image = tf.cond(same_size, lambda: image, resized)
    image.set_shape([height, width, channels])
    return image


def _index(directory, class_names=None):
    """`(paths, labels, class_names)` of a class-subfolder tree, as Keras indexes it."""
    import keras

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No such folder: {directory!r}")
    try:
        listing = keras.utils.image_dataset_from_directory(
            directory,
            labels="inferred",
            class_names=class_names,
            batch_size=None,
            shuffle=False,
            verbose=False,
        )
    except ValueError as error:
        raise ValueError(
            f"The folder {directory!r} cannot be read as a data set: it must hold one "
            "subfolder per class, each with image files (jpeg, png, bmp, gif), and a "
            f"test folder the same class subfolders. Keras says: {error}"
        ) from None
    names = tuple(listing.class_names)
    paths = np.asarray(listing.file_paths, dtype=str)
    # The class of a file is its first folder below the root (images may
    # sit deeper); Keras lists classes in this order.
    roots = [os.path.relpath(p, directory).split(os.sep)[0] for p in paths]
    labels = np.asarray([names.index(r) for r in roots], dtype=np.int64)
    empty = [name for i, name in enumerate(names) if not np.any(labels == i)]
    if empty:
        # Keras makes a class of an empty subfolder: a class no image teaches.
        raise ValueError(
            f"The class subfolders {empty} of {directory!r} hold no image files "
            "(jpeg, png, bmp, gif): add their images, or remove the empty subfolders."
        )
    return paths, labels, names


def check_images(paths, image_shape):
    """Refuses, before training, image files that cannot be read or decoded.

    Every file is decoded once (in parallel), as the pipeline will; a
    corrupt or truncated image would otherwise stop training (or, in the
    test split, the first validation) with a decoder error that names no
    file.

    Raises:
        ValueError: naming the unreadable files (the first ten) and the fix.
    """
    import tensorflow as tf

    def readable(path):
        return path, tf.shape(decode_image(path, image_shape))

    decoded = (
        tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=str))
        .map(readable, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
    )
    good = {path.decode("utf-8") for path, _ in decoded.as_numpy_iterator()}
    bad = [path for path in paths if path not in good]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(
            f"{len(bad)} image file(s) cannot be read as images (corrupt, truncated or "
            f"not an image): {shown}. Replace or delete them, then start again."
        )


def held_out_indices(labels, fraction, seed):
    """Indices of a stratified held-out split: about `fraction` of every class
    (at least one image of any class with two or more), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held_out.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(held_out)) if held_out else np.zeros([0], np.int64)


def _image_shape(path, image_size, color_mode):
    """`(H, W, C)` of the splits: `image_size` squared (or the size of the
    image at `path`), with the channels of `color_mode`."""
    import tensorflow as tf

    channels = COLOR_MODES[color_mode]
    if image_size is not None:
        return int(image_size), int(image_size), channels
    try:
        first = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise ValueError(
            f"The image file {path} cannot be read as an image ({error.message}): "
            "replace or delete it, or give --image-size."
        ) from None
    height, width, _ = first.shape
    return int(height), int(width), channels


def _sample_mean_std(files, seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sample = files[np.sort(rng.permutation(len(files))[:STATS_SAMPLE])]
    images = tf.data.Dataset.from_tensor_slices(sample.paths).map(
        lambda p: decode_image(p, files.image_shape), num_parallel_calls=tf.data.AUTOTUNE
    )
    return compute_mean_std(np.stack(list(images.as_numpy_iterator())))


def load_image_folder(directory, image_size=None, test_directory=None, flip=True, color_mode="rgb"):
    """Loads a folder of class subfolders as a `DataSplits` of `ImageFiles`.

    Args:
        directory: str, the training folder: one subfolder of images per
            class (the layout `keras.utils.image_dataset_from_directory` reads).
        image_size: int or None, the side every image is resized to.
            Defaults to None (the first image's height and width).
        test_directory: str or None, a folder of the same classes to test
            on. Defaults to None: a stratified `TEST_FRACTION` of
            `directory`, drawn with the fixed `SPLIT_SEED`, is held out.
        flip: bool, whether a horizontal flip keeps the label. Defaults to
            True (natural images).
        color_mode: `"rgb"` (3 channels) or `"grayscale"` (1): every image
            is converted to it, whatever its own mode. Defaults to `"rgb"`,
            as Keras' `image_dataset_from_directory`.

    Returns:
        A `DataSplits` whose `x_train` and `x_test` are `ImageFiles` (read
        as the pipeline streams), with `class_names`; mean and std are
        estimated from up to `STATS_SAMPLE` training images.

    Raises:
        ValueError: an empty class subfolder, or image files that cannot be
            decoded (named, `check_images`).
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(
            f"`color_mode` must be one of {list(COLOR_MODES)}. Received: color_mode={color_mode!r}"
        )
    directory = os.fspath(directory)
    paths, labels, class_names = _index(directory)
    if test_directory is None:
        test = held_out_indices(labels, TEST_FRACTION, SPLIT_SEED)
        train = np.setdiff1d(np.arange(len(paths)), test)
        train_paths, y_train, test_paths, y_test = (
            paths[train],
            labels[train],
            paths[test],
            labels[test],
        )
    else:
        train_paths, y_train = paths, labels
        # Keras refuses a test folder whose subfolders are not these classes.
        test_paths, y_test, _ = _index(os.fspath(test_directory), class_names=list(class_names))
        shared = sorted(
            {os.path.realpath(p) for p in train_paths} & {os.path.realpath(p) for p in test_paths}
        )
        if shared:
            # Accuracy on images the model trains on says nothing of new ones.
            raise ValueError(
                f"The test folder {os.fspath(test_directory)!r} shares {len(shared)} "
                f"image(s) with the training folder {directory!r} (e.g. {shared[0]}): test "
                "on images the model does not train on: a separate folder, or no test "
                "folder (a part of the training folder is then held out)."
            )
    image_shape = _image_shape(train_paths[0], image_size, color_mode)
    check_images(list(train_paths) + list(test_paths), image_shape)
    x_train = ImageFiles(train_paths, image_shape)
    mean, std = _sample_mean_std(x_train, SPLIT_SEED)
    return DataSplits(
        name=directory,
        x_train=x_train,
        y_train=y_train,
        x_test=ImageFiles(test_paths, image_shape),
        y_test=y_test,
        num_classes=len(class_names),
        input_shape=image_shape,
        flip=bool(flip),
        mean=mean,
        std=std,
        class_names=class_names,
    )
