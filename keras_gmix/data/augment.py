"""Standard CIFAR augmentation: zero-pad, random crop, horizontal flip.

As in He et al. 2016 (arXiv 1512.03385, section 4.2): "4 pixels are padded on
each side, and a 32x32 crop is randomly sampled from the padded image or its
horizontal flip". The random draw (`draw_crop_flip`) is separate from the
pure application (`apply_crop_flip`), so tests can pass fixed offsets. Both
work on whole batches, with a different crop and flip per image.
"""

import tensorflow as tf


def default_pad(height):
    """Padding for the random crop: 1/8 of the side (4 pixels for 32x32)."""
    return max(1, int(height) // 8)


def draw_crop_flip(batch_size, seed, pad, flip=True):
    """Draws per-image crop offsets and flips from a stateless seed.

    Args:
        batch_size: int or scalar int tensor, the number of images.
        seed: int tensor of shape [2], the seed of the stateless draws.
        pad: int, the padding on each side; offsets lie in [0, 2 * pad].
        flip: bool, whether to draw flips at all. Defaults to True.

    Returns:
        (offsets, flips): int32 [batch_size, 2] (row, column) offsets into
        the padded image, and bool [batch_size] flips (all False when
        `flip` is False).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    offsets = tf.random.stateless_uniform(
        [batch_size, 2],
        seed=seeds[0],
        minval=0,
        maxval=2 * pad + 1,
        dtype=tf.int32,
    )
    if flip:
        flips = tf.random.stateless_uniform([batch_size], seed=seeds[1]) < 0.5
    else:
        flips = tf.zeros([batch_size], dtype=tf.bool)
    return offsets, flips


def apply_crop_flip(images, offsets, flips, pad):
    """Zero-pads, crops at the given offsets and flips: a pure function.

    Offsets (pad, pad) and no flip return the images unchanged.

    Args:
        images: float tensor [batch, H, W, C].
        offsets: int tensor [batch, 2], (row, column) of each crop's top-left
            corner in the padded image, in [0, 2 * pad].
        flips: bool tensor [batch], which images to mirror left-right.
        pad: int, the zero padding on each side.

    Returns:
        A tensor with the shape and dtype of `images`.
    """
    images = tf.convert_to_tensor(images)
    height = tf.shape(images)[1]
    width = tf.shape(images)[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.cast(offsets, tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]  # [batch, H]
    cols = offsets[:, 1:] + tf.range(width)[None, :]  # [batch, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    mirrored = tf.reverse(out, axis=[2])
    out = tf.where(flips[:, None, None, None], mirrored, out)
    return tf.ensure_shape(out, images.shape)


def random_crop_flip(images, seed, pad=4, flip=True):
    """`draw_crop_flip` then `apply_crop_flip` on a batch of images.

    Args:
        images: float tensor [batch, H, W, C].
        seed: int tensor of shape [2]; the same seed gives the same result.
        pad: int, padding on each side. Defaults to 4.
        flip: bool, whether to flip half the images. Defaults to True.

    Returns:
        The augmented batch, same shape and dtype.
    """
    offsets, flips = draw_crop_flip(tf.shape(images)[0], seed, pad, flip)
    return apply_crop_flip(images, offsets, flips, pad)
