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


def decode_image(path, image_shape):
    """Reads one image file as uint8 [H, W, C], resized (bilinear, as Keras'
    loader) only when its size differs."""
    import tensorflow as tf

    height, width, channels = image_shape
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
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
    return paths, labels, names


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


def _first_image_shape(path, image_size):
    """`(H, W, C)` of the split: `image_size` squared (or the first image's
    size), grayscale kept as 1 channel, alpha dropped."""
    import tensorflow as tf

    first = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    height, width, channels = first.shape
    channels = 1 if channels in (1, 2) else 3
    if image_size is not None:
        height = width = image_size
    return int(height), int(width), channels


def _sample_mean_std(files, seed):
    from keras_gmix.data.datasets import compute_mean_std
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sample = files[np.sort(rng.permutation(len(files))[:STATS_SAMPLE])]
    images = tf.data.Dataset.from_tensor_slices(sample.paths).map(
        lambda p: decode_image(p, files.image_shape), num_parallel_calls=tf.data.AUTOTUNE
    )
    return compute_mean_std(np.stack(list(images.as_numpy_iterator())))


def load_image_folder(directory, image_size=None, test_directory=None, flip=True):
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

    Returns:
        A `DataSplits` whose `x_train` and `x_test` are `ImageFiles` (read
        as the pipeline streams), with `class_names`; mean and std are
        estimated from up to `STATS_SAMPLE` training images.
    """
    from keras_gmix.data.datasets import DataSplits

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
    image_shape = _first_image_shape(train_paths[0], image_size)
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
