"""Mixup and CutMix: drawing the mixing randomness, and applying it.

Drawing (`sample_mix`, `sample_box_center`) is separate from applying
(`apply_mix`): applying is a pure function of its inputs, so tests pass fixed
values and every replica of a distributed run can draw its own.

References:
    - Zhang et al., "mixup: Beyond Empirical Risk Minimization", 2018,
      https://arxiv.org/abs/1710.09412
    - Yun et al., "CutMix: Regularization Strategy to Train Strong
      Classifiers with Localizable Features", 2019,
      https://arxiv.org/abs/1905.04899
"""

import keras
import numpy as np
from keras import ops

from keras_gmix import backend, checks

MIX_MODES = ("mixup", "cutmix")


def check_alpha(alpha):
    """Returns `alpha` as a float; a ValueError unless it is a finite number > 0."""
    return checks.check_number(
        "alpha", alpha, low=0, low_inclusive=False, meaning="the Beta(alpha, alpha) concentration"
    )


def check_mix(mix):
    if mix not in MIX_MODES:
        raise ValueError(f"Argument `mix` must be one of {MIX_MODES}. Received: mix={mix!r}")


def seed_tensor(seed):
    """Turns `seed` into a stateless seed: an int32 tensor of shape [2].

    `seed` may be an int, a `keras.random.SeedGenerator` (its state advances),
    a shape-[2] integer tensor, or None (an unseeded draw).
    """
    if isinstance(seed, keras.random.SeedGenerator):
        seed = seed.next()
    elif seed is None:
        seed = backend.unseeded()
    elif not (ops.is_tensor(seed) or isinstance(seed, (np.ndarray, list, tuple))):
        # A scalar seed: checked here, not deep inside the backend ("abc"
        # would fail there with a message that names no argument).
        seed = checks.check_number("seed", seed, integer=True)
        seed = np.array([seed % 2**31, 0], "int32")
    return ops.cast(ops.reshape(seed, [2]), "int32")


# Marsaglia-Tsang draws this many candidates per Gamma sample and keeps the
# first accepted one; with shape >= 1 each is accepted with probability
# > 0.95, so all 16 fail with probability < 1e-20.
GAMMA_CANDIDATES = 16


def uniform(shape, seed):
    """Uniform [0, 1) floats from the backend's stateless random bits.

    Converted here from the bits (the top 24 of each draw, plus half a step:
    never exactly 0), because TensorFlow turns the same bits into other
    floats under XLA than in graph mode; the bits themselves agree.
    """
    top = ops.right_shift(backend.random_bits(shape, seed), 8)
    return (ops.cast(top, "float32") + 0.5) * (2.0**-24)


def normal(shape, seed):
    """Standard normal floats (Box-Muller on `uniform`), XLA-consistent."""
    pair = uniform([2] + list(shape), seed)
    return ops.sqrt(-2.0 * ops.log(pair[0])) * ops.cos(2.0 * np.pi * pair[1])


def split_seed(seed, num):
    """`num` independent stateless seeds derived from one seed tensor."""
    return backend.split_seed(seed, num)


def step_seed(seed, step):
    """The stateless seed of step `step` of a stream seeded with the int `seed`."""
    pair = ops.stack(
        [ops.convert_to_tensor(seed % (2**31 - 1), "int32"), ops.cast(step, "int32") % (2**31 - 1)]
    )
    return ops.cast(pair, "int32")


def sample_gamma(shape, alpha, seed):
    """Gamma(alpha, 1) samples, vectorized and XLA-compatible.

    TensorFlow's stateless Gamma op has no XLA kernel, so this implements
    Marsaglia & Tsang's method (ACM TOMS 2000) with a fixed number of
    vectorized candidates, and Gamma(a) = Gamma(a + 1) * U^(1/a) for a < 1.
    """
    boost_seed, normal_seed, accept_seed = split_seed(seed, 3)
    shape = list(shape)
    candidates_shape = shape + [GAMMA_CANDIDATES]
    a = alpha + 1.0 if alpha < 1.0 else float(alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / ops.sqrt(np.float32(9.0 * d))
    z = normal(candidates_shape, normal_seed)
    u = uniform(candidates_shape, accept_seed)
    v = (1.0 + c * z) ** 3
    safe_v = ops.maximum(v, 1e-30)
    accepted = ops.logical_and(
        v > 0, ops.log(u) < 0.5 * z * z + d - d * safe_v + d * ops.log(safe_v)
    )
    first = ops.argmax(ops.cast(accepted, "int32"), axis=-1)  # first accepted candidate
    gamma = ops.take_along_axis(d * safe_v, ops.expand_dims(first, -1), axis=-1)[..., 0]
    if alpha < 1.0:
        boost = uniform(shape, boost_seed)
        gamma = gamma * boost ** (1.0 / alpha)
    return gamma


def sample_beta(shape, alpha, seed):
    """Beta(alpha, alpha) samples: X / (X + Y) with X, Y ~ Gamma(alpha)."""
    seed_x, seed_y = split_seed(seed, 2)
    x = sample_gamma(shape, alpha, seed_x)
    y = sample_gamma(shape, alpha, seed_y)
    total = x + y
    # Both draws can underflow to 0 for tiny alpha: fall back to 1/2.
    return ops.where(total > 0, x / ops.where(total > 0, total, 1.0), 0.5)


def sample_permutation(n, seed):
    """A uniform random permutation of range(n): the order of uniform keys."""
    keys = uniform([n], seed)
    return ops.cast(ops.argsort(keys), "int32")


def sample_mix(batch_size, alpha, seed=None, per_example=False):
    """Draws the mixing coefficient(s) and the partner permutation of a batch.

    Args:
        batch_size: number of examples n (int or scalar int tensor).
        alpha: concentration of the Beta(alpha, alpha) distribution of lam;
            must be > 0.
        seed: int, `keras.random.SeedGenerator`, or a shape-[2] int tensor.
            The same seed gives the same draw. Defaults to `None` (an
            unseeded draw).
        per_example: draw one lam per example instead of one per batch.
            Defaults to `False`.

    Returns:
        `(lam, perm)`: lam of shape [] (or [n] if `per_example`), float32 in
        [0, 1]; perm a uniform random permutation of `range(n)`, int32.

    Example:

    >>> lam, perm = sample_mix(8, alpha=1.0, seed=0)
    >>> x_mix, y_mix = apply_mix(x, y, lam, perm)
    """
    alpha = check_alpha(alpha)
    if not ops.is_tensor(batch_size):
        batch_size = checks.check_number("batch_size", batch_size, low=1, integer=True)
    seed = seed_tensor(seed)
    lam_seed, perm_seed = split_seed(seed, 2)
    shape = [batch_size] if per_example else []
    lam = sample_beta(shape, alpha, lam_seed)
    perm = sample_permutation(batch_size, perm_seed)
    return lam, perm


def sample_box_center(batch_size, seed=None, per_example=False):
    """Draws CutMix box centers as fractions of the image height and width.

    Returns a float32 tensor of shape [2] (or [n, 2] if `per_example`) with
    values in [0, 1): (center_row, center_col) / (height, width).
    """
    shape = [batch_size, 2] if per_example else [2]
    return uniform(shape, seed_tensor(seed))


def _broadcast_to_rank(values, rank):
    """Reshapes a [] or [n] tensor so that it broadcasts over a rank-`rank` batch."""
    values = ops.convert_to_tensor(values)
    if len(values.shape) == 0:
        return values
    return ops.reshape(values, [-1] + [1] * (rank - 1))


def cutmix_mask(image_shape, lam, box_center):
    """The CutMix paste mask and the label weight it implies.

    A box of area fraction (1 - lam), centred at `box_center` and clipped to
    the image, is marked 0 (pixels taken from the partner); the rest is 1.

    Args:
        image_shape: static (height, width).
        lam: [] or [n] float tensor.
        box_center: [2] or [n, 2] fractions of (height, width).

    Returns:
        `(mask, label_lam)`: mask of shape [h, w] or [n, h, w] (float32) and
        label_lam, the kept area fraction after clipping, shape like lam.
    """
    height, width = image_shape
    lam = ops.convert_to_tensor(lam, "float32")
    box_center = ops.convert_to_tensor(box_center, "float32")
    cut = ops.sqrt(1.0 - lam)
    half_h = cut * height / 2.0
    half_w = cut * width / 2.0
    center_r = box_center[..., 0] * height
    center_c = box_center[..., 1] * width
    # Integer box edges, clipped to the image (as in the CutMix paper).
    top = ops.clip(ops.round(center_r - half_h), 0.0, float(height))
    bottom = ops.clip(ops.round(center_r + half_h), 0.0, float(height))
    left = ops.clip(ops.round(center_c - half_w), 0.0, float(width))
    right = ops.clip(ops.round(center_c + half_w), 0.0, float(width))
    rows = ops.arange(height, dtype="float32")
    cols = ops.arange(width, dtype="float32")
    expand = lambda t: t[..., None]  # noqa: E731  broadcast edges over pixels
    in_rows = ops.cast((rows >= expand(top)) & (rows < expand(bottom)), "float32")
    in_cols = ops.cast((cols >= expand(left)) & (cols < expand(right)), "float32")
    inside = in_rows[..., :, None] * in_cols[..., None, :]
    box_area = (bottom - top) * (right - left)
    label_lam = 1.0 - box_area / float(height * width)
    return 1.0 - inside, label_lam


def _blend(a, b, weight):
    """weight * a + (1 - weight) * b, with a [] or [n] weight broadcast over a's example axes."""
    weight = ops.cast(_broadcast_to_rank(weight, len(a.shape)), a.dtype)
    return weight * a + (1 - weight) * b


def _check_floating(inputs):
    for i, value in enumerate(inputs):
        dtype = keras.backend.standardize_dtype(value.dtype)
        if not keras.backend.is_float_dtype(dtype):
            which = (
                "The input" if len(inputs) == 1 else f"Input {i} (in `keras.tree.flatten` order)"
            )
            raise ValueError(
                f"{which} has dtype {dtype}: Mixup and CutMix blend inputs, "
                "which needs floating-point values. Cast images to float32 in the data "
                "(e.g. `x.astype('float32')`), or start the network with a float "
                "`keras.Input`, whose dtype GMixModel then casts to; inputs that cannot "
                "be blended, such as "
                "token ids, cannot be mixed: train them with method='sam' or 'erm'."
            )


def _cutmix(images, lam, box_center):
    """Pastes the partner's box into every image input; returns (mixed, label_lam)."""
    sizes = {(int(image.shape[1]), int(image.shape[2])) for image, _ in images}
    if len(sizes) != 1:
        raise ValueError(
            "`mix='cutmix'` pastes one box into every image input, so they must share "
            f"their height and width; received image inputs of sizes {sorted(sizes)}. "
            "Resize them to one size, or use mix='mixup'."
        )
    if box_center is None:
        box_center = np.array([0.5, 0.5], "float32")
    box_center = ops.convert_to_tensor(box_center, "float32")
    if len(lam.shape) == 1 and len(box_center.shape) == 1:
        box_center = ops.broadcast_to(box_center, [ops.shape(lam)[0], 2])
    mask, label_lam = cutmix_mask(sizes.pop(), lam, box_center)
    mixed = []
    for image, partner in images:
        keep = ops.cast(mask[..., None], image.dtype)  # broadcast over channels
        mixed.append(keep * image + (1 - keep) * partner)
    return mixed, label_lam


def blendable_inputs(x, network_input_dtypes):
    """x with its integer (and bool) inputs cast to the network's input dtype,
    when the network reads every input in one floating-point dtype.

    A Keras functional model converts each input to its Input's dtype, so
    uint8 images reach a float32 network as float32 anyway; casting before
    the mix lets them be blended. `network_input_dtypes` is empty when the
    network declares no inputs (subclassed, or built by its first batch):
    then, as for an integer Input (token ids), x is returned unchanged and
    `mix_batch` refuses integer inputs."""
    dtypes = {keras.backend.standardize_dtype(dtype) for dtype in network_input_dtypes}
    if len(dtypes) != 1 or not keras.backend.is_float_dtype(next(iter(dtypes))):
        return x
    (dtype,) = dtypes

    def blendable(value):
        value = ops.convert_to_tensor(value)
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(value.dtype)):
            return value
        return ops.cast(value, dtype)

    return keras.tree.map_structure(blendable, x)


def mix_batch(x, y, lam, perm, mix="mixup", box_center=None):
    """Mixes a batch; returns `(x_mix, y_mix, label_lam)`.

    `x` and `y` may be nests (a model with several inputs or outputs): every
    input and every label of example i is mixed with the same lam and the
    same partner perm(i). CutMix pastes one box into each image input (rank
    4, channels last) and blends the other inputs and the labels with the
    kept area.

    `label_lam` is the weight of the original example in the mixed label
    (lam itself for Mixup, the clipped kept area for CutMix): callers use it
    to mix anything else attached to an example, e.g. sample weights.
    """
    check_mix(mix)
    inputs = [ops.convert_to_tensor(value) for value in keras.tree.flatten(x)]
    _check_floating(inputs)
    lam = ops.convert_to_tensor(lam, "float32")
    partners = [ops.take(value, perm, axis=0) for value in inputs]
    if mix == "mixup":
        label_lam = lam
        mixed = [_blend(value, partner, lam) for value, partner in zip(inputs, partners)]
    else:
        is_image = [len(value.shape) == 4 for value in inputs]
        if not any(is_image):
            shapes = ", ".join(str(value.shape) for value in inputs)
            raise ValueError(
                "`mix='cutmix'` needs image batches of rank 4 (n, height, "
                f"width, channels); received inputs of shape {shapes}. Use "
                "mix='mixup' for other inputs."
            )
        images = [(v, p) for v, p, image in zip(inputs, partners, is_image) if image]
        mixed_images, label_lam = _cutmix(images, lam, box_center)
        mixed_images = iter(mixed_images)
        # Non-image inputs of the example are weighted like its label.
        mixed = [
            next(mixed_images) if image else _blend(value, partner, label_lam)
            for value, partner, image in zip(inputs, partners, is_image)
        ]
    labels = [ops.convert_to_tensor(value) for value in keras.tree.flatten(y)]
    y_mixed = [_blend(value, ops.take(value, perm, axis=0), label_lam) for value in labels]
    return keras.tree.pack_sequence_as(x, mixed), keras.tree.pack_sequence_as(y, y_mixed), label_lam


def apply_mix(x, y, lam, perm, mix="mixup", box_center=None):
    """Mixes a batch with given coefficients: a pure function.

    Mixup: `x~_i = lam x_i + (1 - lam) x_perm(i)`, and the same for y.
    CutMix: a box of area fraction (1 - lam) from `x_perm(i)` is pasted into
    `x_i`; the label weight is recomputed from the clipped box area.

    Args:
        x: input batch, shape [n, ...] (rank 4, channels last, for CutMix),
            or a list/dict of them (several inputs: mixed alike).
        y: one-hot (or soft) labels, shape [n, classes], or a list/dict of
            them (several outputs).
        lam: [] or [n] mixing coefficient(s), from `sample_mix`.
        perm: [n] permutation, from `sample_mix`.
        mix: `"mixup"` or `"cutmix"`. Defaults to `"mixup"`.
        box_center: CutMix only: [2] or [n, 2] box centre as fractions of
            (height, width), from `sample_box_center`. Defaults to `None`
            (the image centre).

    Returns:
        `(x_mix, y_mix)`.

    Example:

    >>> lam, perm = sample_mix(4, alpha=1.0, seed=1)
    >>> x_mix, y_mix = apply_mix(x, keras.ops.one_hot(labels, 10), lam, perm)
    """
    x_mix, y_mix, _ = mix_batch(x, y, lam, perm, mix=mix, box_center=box_center)
    return x_mix, y_mix
