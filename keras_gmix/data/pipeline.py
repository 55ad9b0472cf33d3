"""tf.data input pipelines: cache, shuffle, batch, augment, normalize."""

import numpy as np
import tensorflow as tf

from keras_gmix.data.augment import default_pad, random_crop_flip
from keras_gmix.data.datasets import TFDS_DATASETS
from keras_gmix.data.folder import ImageFiles, decode_image

# "standard": pad-and-crop plus (optional) horizontal flip. The stronger ones
# add Keras' own layers after it: RandAugment (Cubuk et al. 2020, arXiv
# 1909.13719) and RandomErasing (Zhong et al. 2020, arXiv 1708.04896).
AUGMENTATIONS = ("none", "standard", "randaugment", "erasing", "strong")
_KERAS_LAYERS = {
    "none": (),
    "standard": (),
    "randaugment": ("randaugment",),
    "erasing": ("erasing",),
    "strong": ("randaugment", "erasing"),
}


def resolve_normalization(normalization, channels):
    """Turns a `normalization` argument into (mean, std) arrays or None.

    Args:
        normalization: None (keep [0, 1]), the name of a data set with
            published constants ("cifar10", "cifar100"), or a pair
            (mean, std) of sequences of 1 or `channels` floats in [0, 1]
            units.
        channels: int, the number of image channels.

    Returns:
        None, or (mean, std) as float32 arrays of shape [channels].
    """
    if normalization is None:
        return None
    if isinstance(normalization, str):
        info = TFDS_DATASETS.get(normalization)
        if info is None or info.mean is None:
            known = sorted(k for k, v in TFDS_DATASETS.items() if v.mean)
            raise ValueError(
                f"No normalization constants for {normalization!r}. Pass one "
                f"of {known}, a (mean, std) pair, or None. For other data "
                "sets use the `mean` and `std` of `load_dataset`'s result."
            )
        mean, std = info.mean, info.std
    else:
        try:
            mean, std = normalization
        except (TypeError, ValueError):
            raise ValueError(
                "`normalization` must be None, a data set name or a "
                f"(mean, std) pair. Received: normalization={normalization!r}"
            ) from None
    mean = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), [channels])
    std = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), [channels])
    if not np.all(std > 0):
        raise ValueError(f"Normalization std must be positive. Received: std={std.tolist()}")
    return mean.copy(), std.copy()


def _keras_augmenters(names, seed, num_ops, factor, erasing_probability):
    import keras

    # Distinct seeds, so that the two layers do not draw the same numbers.
    def layer_seed(offset):
        return None if seed is None else int(seed) + offset

    layers = []
    for name in names:
        if name == "randaugment":
            layers.append(
                keras.layers.RandAugment(
                    value_range=(0.0, 1.0),
                    num_ops=num_ops,
                    factor=factor,
                    seed=layer_seed(1),
                )
            )
        else:
            p = float(erasing_probability)
            layers.append(
                keras.layers.RandomErasing(
                    factor=(p, p), value_range=(0.0, 1.0), seed=layer_seed(2)
                )
            )
    return layers


def make_pipeline(
    x,
    y,
    batch_size,
    training,
    augment="standard",
    seed=None,
    normalization=None,
    flip=True,
    pad=None,
    drop_remainder=False,
    cache=True,
    randaugment_num_ops=2,
    randaugment_factor=0.5,
    erasing_probability=0.5,
    start_epoch=None,
):
    """Builds a tf.data pipeline of (image, label) batches from arrays.

    Order: cache the raw examples, shuffle (training only, seeded, reshuffled
    every epoch), batch, convert to float32 in [0, 1], augment (training
    only), normalize, prefetch. Augmentation works on whole batches with a
    different draw per image. "standard" uses stateless random ops seeded
    per batch, so it runs in parallel and is deterministic for a given
    `seed`. Keras' RandAugment and RandomErasing layers keep their random
    state in a variable: with a `seed` they run sequentially (deterministic),
    without one in parallel. Keras' RandAugment picks its `num_ops`
    operations once per batch (magnitudes vary per image), and computes all
    of its candidate operations on every batch: on 2 CPU cores "standard"
    delivers about 23,000 CIFAR images/s, "randaugment" about 650 seeded
    and 1,100 unseeded, close to what a ResNet-20 trains on per second.

    Image files (`ImageFiles`, a folder data set) stream: their paths are
    shuffled, and each image is read and resized after shuffling, never
    cached, so only the batches in flight are in memory.

    Args:
        x: array [n, H, W, C], uint8 in [0, 255] or float in [0, 1], or
            `ImageFiles` (read as uint8).
        y: array [n] of integer labels.
        batch_size: int, examples per batch.
        training: bool. True shuffles and augments; False keeps the order
            and applies no augmentation (only conversion and normalization).
        augment: one of "none", "standard" (pad, random crop, flip),
            "randaugment" (standard + RandAugment), "erasing" (standard +
            RandomErasing), "strong" (standard + both). Ignored when
            `training` is False. Defaults to "standard".
        seed: int or None, seeds shuffling and augmentation; the same seed
            gives the same batches. Defaults to None (not reproducible).
        normalization: None, "cifar10", "cifar100", or (mean, std) in
            [0, 1] units, e.g. `(splits.mean, splits.std)`. Defaults to None
            (images stay in [0, 1]).
        flip: bool, whether "standard" flips images horizontally. Pass
            False for digits and SVHN (`DataSplits.flip`). Defaults to True.
        pad: int or None, zero padding before the random crop. Defaults to
            None (1/8 of the height: 4 for 32x32).
        drop_remainder: bool, drop the last partial batch. Defaults to False.
        cache: bool, cache the examples before shuffling (arrays only:
            image files are never cached). Defaults to True.
        randaugment_num_ops: int, RandAugment's `num_ops`. Defaults to 2.
        randaugment_factor: float, RandAugment's `factor` (magnitude) in
            [0, 1]. Defaults to 0.5.
        erasing_probability: float in [0, 1], the probability that
            RandomErasing erases a patch of an image. Defaults to 0.5.
        start_epoch: None, or an int >= 0 (training only, needs a `seed`).
            None: every pass over the dataset is one epoch, reshuffled.
            An int: an endless stream of epochs `start_epoch`,
            `start_epoch + 1`, ..., whose shuffling and "standard"
            augmentation are a function of (seed, epoch) alone: train it
            with `fit(..., steps_per_epoch=ceil(n / batch_size))` (floor
            with `drop_remainder=True`). A run
            resumed at epoch k with `start_epoch=k` then sees exactly the
            batches the uninterrupted run saw (what `gmix-train --resume`
            relies on). Keras' RandAugment and RandomErasing keep their
            random state in a variable and are not keyed by the epoch.
            Defaults to None.

    Returns:
        A `tf.data.Dataset` of (float32 [b, H, W, C], int64 [b]).

    Example:

    >>> splits = load_dataset("digits", image_size=16)
    >>> ds = make_pipeline(splits.x_train, splits.y_train, 64, training=True,
    ...                    seed=0, flip=splits.flip)
    >>> model.fit(ds, epochs=5)
    """
    files = isinstance(x, ImageFiles)
    if not files:
        x = np.asarray(x)
    y = np.asarray(y)
    if len(x.shape) != 4:
        raise ValueError(f"`x` must have shape [n, H, W, C]. Received shape {x.shape}.")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"`y` must have shape [{x.shape[0]}] to match `x`. Received shape {y.shape}."
        )
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"`x` must be uint8 in [0, 255] or float in [0, 1]. Received dtype {x.dtype}."
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Unknown augment={augment!r}. Expected one of {list(AUGMENTATIONS)}.")
    if not 0.0 <= erasing_probability <= 1.0:
        raise ValueError(
            "`erasing_probability` must be in [0, 1]. "
            f"Received: erasing_probability={erasing_probability!r}"
        )
    norm = resolve_normalization(normalization, x.shape[-1])
    if pad is None:
        pad = default_pad(x.shape[1])

    if start_epoch is not None:
        if not training or seed is None:
            raise ValueError(
                "`start_epoch` keys shuffling and augmentation by the epoch: "
                "it needs `training=True` and an int `seed`. Received: "
                f"training={training!r}, seed={seed!r}"
            )
        if (
            isinstance(start_epoch, bool)
            or not isinstance(start_epoch, (int, np.integer))
            or start_epoch < 0
        ):
            raise ValueError(
                f"`start_epoch` must be None or an int >= 0. Received: start_epoch={start_epoch!r}"
            )
        if drop_remainder and x.shape[0] < batch_size:
            # Every epoch would be empty, and the endless stream would
            # search for a batch forever.
            raise ValueError(
                f"With drop_remainder=True, {x.shape[0]} examples make no "
                f"batch of {batch_size}. Lower `batch_size` or keep the "
                "last partial batch."
            )
    decode = None
    if files:
        # Shuffled as paths, read after: a buffer of paths, not of images.
        image_shape = x.image_shape
        decode = lambda path, label: (decode_image(path, image_shape), label)  # noqa: E731
        examples = tf.data.Dataset.from_tensor_slices((x.paths, y.astype(np.int64)))
    else:
        examples = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64)))
        if cache:
            examples = examples.cache()

    def read(elements):
        if decode is None:
            return elements
        return elements.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    if not training:
        batches = read(examples).batch(int(batch_size), drop_remainder=drop_remainder)
        # The (batch, augmentation seed) structure of training; the seed is unused.
        ds = batches.map(lambda xb, yb: ((xb, yb), tf.zeros([2], tf.int64)))
    elif start_epoch is None:
        batches = read(
            examples.shuffle(x.shape[0], seed=seed, reshuffle_each_iteration=True)
        ).batch(int(batch_size), drop_remainder=drop_remainder)
        # One stateless seed pair per batch; a new sequence every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((batches, seeds))
    else:
        ds = tf.data.Dataset.counter(int(start_epoch)).flat_map(
            lambda epoch: _epoch_batches(
                examples,
                epoch,
                seed,
                x.shape[0],
                int(batch_size),
                drop_remainder,
                read,
            )
        )

    def to_float(images):
        # uint8 is divided by 255; floats are kept as they are.
        return tf.image.convert_image_dtype(images, tf.float32)

    augment = augment if training else "none"
    if augment == "none":
        ds = ds.map(
            lambda batch, _: (to_float(batch[0]), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:

        def crop_flip(batch, batch_seed):
            xb, yb = batch
            xb = random_crop_flip(to_float(xb), batch_seed, pad=pad, flip=flip)
            return xb, yb

        ds = ds.map(crop_flip, num_parallel_calls=tf.data.AUTOTUNE)

    layers = _keras_augmenters(
        _KERAS_LAYERS[augment],
        seed,
        randaugment_num_ops,
        randaugment_factor,
        erasing_probability,
    )
    if layers:

        def keras_augment(xb, yb):
            for layer in layers:
                xb = layer(xb, training=True)
            return tf.clip_by_value(xb, 0.0, 1.0), yb

        ds = ds.map(
            keras_augment,
            num_parallel_calls=None if seed is not None else tf.data.AUTOTUNE,
        )

    if norm is not None:
        mean = tf.constant(norm[0])
        std = tf.constant(norm[1])
        ds = ds.map(
            lambda xb, yb: ((xb - mean) / std, yb),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed, epoch):
    """The int64 seed of epoch `epoch`'s shuffle and augmentation draws.

    A pure function of (seed, epoch), so that any epoch's batches can be
    rebuilt on their own (a resumed run). Distinct (seed, epoch) pairs give
    distinct seeds for epochs below the multiplier, 1,000,003.
    """
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def _epoch_batches(examples, epoch, seed, count, batch_size, drop_remainder, read):
    """One epoch's shuffled batches, each zipped with its augmentation seed.

    `read` maps the shuffled examples to images (reads image files; the
    identity for arrays).

    Shuffles with a stateless permutation of the whole set, not
    `Dataset.shuffle`, whose order also depends on TensorFlow's global seed
    and which takes no tensor seed when that is 0. At the start of every
    epoch the permutation briefly holds two more copies of the (in-memory)
    training set; a full shuffle buffer holds one.
    """
    this_seed = epoch_seed(seed, epoch)

    def permute(xs, ys):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(ys)[0]), seed=tf.stack([this_seed, -1])
        )
        return tf.gather(xs, order), tf.gather(ys, order)

    batches = read(examples.batch(count).map(permute).unbatch()).batch(
        batch_size, drop_remainder=drop_remainder
    )
    # Batch i's stateless seed pair: (epoch seed, i).
    seeds = tf.data.Dataset.range(tf.int64.max).map(lambda i: tf.stack([this_seed, i]))
    return tf.data.Dataset.zip((batches, seeds))


def make_pipelines(
    splits,
    batch_size,
    augment="standard",
    seed=0,
    normalize=True,
    eval_batch_size=None,
    **kwargs,
):
    """Train and test pipelines for a `DataSplits`, with its flip and stats.

    Args:
        splits: a `DataSplits` from `load_dataset`.
        batch_size: int, training batch size.
        augment: training augmentation, see `make_pipeline`. Defaults to
            "standard".
        seed: int or None, seed of shuffling and augmentation. Defaults to 0.
        normalize: bool, normalize with `splits.mean` and `splits.std`.
            Defaults to True.
        eval_batch_size: int or None, test batch size. Defaults to
            `batch_size`.
        **kwargs: passed to `make_pipeline` for the training pipeline
            (e.g. `pad`, `drop_remainder`, `randaugment_factor`).

    Returns:
        (train_ds, test_ds): two `tf.data.Dataset`s.
    """
    normalization = (splits.mean, splits.std) if normalize else None
    train = make_pipeline(
        splits.x_train,
        splits.y_train,
        batch_size,
        training=True,
        augment=augment,
        seed=seed,
        normalization=normalization,
        flip=splits.flip,
        **kwargs,
    )
    test = make_pipeline(
        splits.x_test,
        splits.y_test,
        eval_batch_size or batch_size,
        training=False,
        normalization=normalization,
    )
    return train, test
